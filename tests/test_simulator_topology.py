"""The simulator's cluster topology (simulator.comm_for_layout): which measured table a layout's collectives
cost, and the hierarchical all-reduce over the one-rank-per-node table, against hand-computed times."""

import json

import pytest

from gptdist.errors import ConfigError
from gptdist.studies.scaling import Layout
from gptdist.studies.simulator import BucketTiming, Timeline, comm_for_layout, comm_from_table, inter_tables, simulate

MB = 1_000_000


def write_table(path, world: int, rows: dict[str, list[tuple[int, float]]]):
    """A comm_bench results.json: op -> [(size_bytes, time_us), ...] at one world size."""
    path.mkdir(parents=True)
    results = [{"op": op, "world_size": world, "size_bytes": s, "time_us": t} for op, pts in rows.items() for s, t in pts]
    (path / "results.json").write_text(json.dumps({"results": results}))
    return path


@pytest.fixture
def tables(tmp_path):
    # one node, 2 ranks over loopback: reduce-scatter 2 ms/MB, all-gather 1 ms/MB, all-reduce 3 ms/MB
    intra = comm_from_table([write_table(tmp_path / "intra_n2", 2, {
        "reduce_scatter": [(MB, 2000.0), (2 * MB, 4000.0)],
        "all_gather": [(MB, 1000.0), (2 * MB, 2000.0)],
        "all_reduce": [(MB, 3000.0), (2 * MB, 6000.0)]})])
    # across the link, one rank per node: all-reduce 0.5 MB in 5 ms, 1 MB in 9 ms
    write_table(tmp_path / "inter_2x1", 2, {"all_reduce": [(MB // 2, 5000.0), (MB, 9000.0)]})
    return intra, tmp_path


def test_two_nodes_of_two_ranks_all_reduce_hierarchically(tables):
    intra, root = tables
    comm = comm_for_layout(intra, inter_tables(f"2x1={root / 'inter_2x1'}"), Layout(2, 2))
    # 2 MB on 2 nodes x 2 ranks: reduce-scatter in the node (4 ms), each rank's 1 MB shard all-reduced with
    # its peer across the link (9 ms), all-gather in the node (2 ms)
    assert comm("all_reduce", 2 * MB, 4) == pytest.approx(4 + 9 + 2)
    # 1.5 MB: 3 + (0.75 MB across: halfway 5..9 = 7) + 1.5
    assert comm("all_reduce", 1.5 * MB, 4) == pytest.approx(3 + 7 + 1.5)
    with pytest.raises(ConfigError, match="measure that layout"):
        comm("reduce_scatter", MB, 4)


def test_a_measured_layout_uses_its_own_table_and_one_node_the_intra_table(tables):
    intra, root = tables
    write_table(root / "inter_2x2", 4, {"all_reduce": [(MB, 20000.0), (2 * MB, 40000.0)]})
    inter = inter_tables(f"2x1={root / 'inter_2x1'},2x2={root / 'inter_2x2'}")
    assert comm_for_layout(intra, inter, Layout(2, 2))("all_reduce", 2 * MB, 4) == pytest.approx(40.0)  # not 15
    assert comm_for_layout(intra, inter, Layout(2, 1))("all_reduce", MB, 2) == pytest.approx(9.0)
    assert comm_for_layout(intra, inter, Layout(1, 2))("all_reduce", MB, 2) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="no inter-node comm table for layout 3x2"):
        comm_for_layout(intra, inter, Layout(3, 2))
    with pytest.raises(ConfigError, match="LAYOUT=RESULTS"):
        inter_tables("2x1")


def test_a_step_on_two_nodes_pays_the_link_for_its_bucket(tables):
    """manual, no overlap: forward 10 + backward 20 + the 1 MB bucket's all-reduce + optimizer 5 + loss
    all-reduce (8 bytes: the table's smallest size) + other 1, on each layout's own link."""
    intra, root = tables
    t = Timeline(pre_ms=10.0, backward_ms=20.0, post_ms={"optimizer": 5.0}, other_ms=1.0, buckets=[BucketTiming(0, MB, 5.0)])
    inter = inter_tables(f"2x1={root / 'inter_2x1'}")
    one_node = simulate(t, comm_for_layout(intra, inter, Layout(1, 2)), 2, "manual", overlap=False)
    two_nodes = simulate(t, comm_for_layout(intra, inter, Layout(2, 1)), 2, "manual", overlap=False)
    assert one_node.step_ms == pytest.approx(10 + 20 + 3 + 5 + 3 + 1)
    assert two_nodes.step_ms == pytest.approx(10 + 20 + 9 + 5 + 5 + 1)
