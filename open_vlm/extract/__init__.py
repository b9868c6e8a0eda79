"""Feature extraction: image shards in, `region_features` shards out (`open-vlm extract`)."""
