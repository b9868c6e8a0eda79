import pytest

from launch.instances import LaunchError, gpus_per_node


def test_gpus_per_node_known_types():
    assert gpus_per_node("ml.p5.48xlarge") == 8
    assert gpus_per_node("ml.g5.12xlarge") == 4
    assert gpus_per_node("ml.g5.2xlarge") == 1


def test_unknown_type_lists_close_matches():
    with pytest.raises(LaunchError, match=r"unknown instance type 'ml\.p5\.24xlarge'; did you mean ml\.p5\.48xlarge"):
        gpus_per_node("ml.p5.24xlarge")
