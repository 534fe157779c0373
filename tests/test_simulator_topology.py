"""The simulator's cluster topology (simulator.comm_for_layout): which measured table a layout's collectives
cost, and the hierarchical all-reduce over the one-rank-per-node table, against hand-computed times."""

import json
import math

import pytest

from gptdist.errors import ConfigError
from gptdist.studies.scaling import Layout
from gptdist.studies.simulator import BucketTiming, Timeline, comm_for_layout, comm_from_table, inter_tables, simulate

MB = 1_000_000


def write_table(path, world: int, rows: dict[str, list[tuple[int, float]]], gap_ms: float | None = None):
    """A comm_bench results.json: op -> [(size_bytes, time_us), ...] at one world size (gap_ms: --gap-ms)."""
    path.mkdir(parents=True)
    results = [{"op": op, "world_size": world, "size_bytes": s, "time_us": t} for op, pts in rows.items() for s, t in pts]
    if gap_ms is not None:
        for r in results:
            r["gap_ms"] = gap_ms
    meta = {"nodes": 2, "local_world_size": world // 2} if gap_ms is not None else None  # across two nodes
    (path / "results.json").write_text(json.dumps({"results": results, **({"metadata": meta} if meta else {})}))
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


# ----------------------------------------------------------------------------- the idle link's credit


@pytest.fixture
def idle_link(tmp_path):
    """2x1 all-reduce back to back: 8 B in 0.1 ms, 1 MB in 9, 2 MB in 17, 4 MB in 33 ms; after 10 ms of idle link
    (--gap-ms 10): 8 B in 2 ms (slower: ranks waking late), 1 MB in 6, 2 MB in 14 (3 ms saved), 4 MB in 20 (13
    saved: more than 10 ms of idle can give, noise)."""
    write_table(tmp_path / "b2b", 2, {"all_reduce": [(8, 100.0), (MB, 9000.0), (2 * MB, 17000.0), (4 * MB, 33000.0)]},
                gap_ms=0.0)
    write_table(tmp_path / "idle", 2, {"all_reduce": [(8, 2000.0), (MB, 6000.0), (2 * MB, 14000.0), (4 * MB, 20000.0)]},
                gap_ms=10.0)
    return tmp_path


def test_an_idle_link_table_credits_a_collective_by_the_idle_before_it(idle_link):
    comm = inter_tables(f"2x1={idle_link / 'b2b'},2x1={idle_link / 'idle'}")["2x1"]
    # the credit grows linearly with the idle time up to the gap (a token bucket refilling), then stays
    assert [comm("all_reduce", MB, 2, idle_ms=i) for i in (0, 5, 10, 100, math.inf)] == pytest.approx([9, 7.5, 6, 6, 6])
    assert comm("all_reduce", MB, 2) == pytest.approx(9.0)  # a caller that does not say: back to back
    assert comm("all_reduce", 1.5 * MB, 2, idle_ms=10) == pytest.approx(10.0)  # halfway 6..14
    assert comm("all_reduce", 4 * MB, 2, idle_ms=10) == pytest.approx(33 - 10)  # at most the 10 ms of idle
    assert comm("all_reduce", 4 * MB, 2, idle_ms=5) == pytest.approx(33 - 5)
    assert comm("all_reduce", 8, 2, idle_ms=50) == pytest.approx(0.1)  # a slower idle call gives no credit
    write_table(idle_link / "idle30", 2, {"all_reduce": [(MB, 5000.0)]}, gap_ms=30.0)
    with pytest.raises(ConfigError, match="after several idle gaps"):
        comm_from_table([idle_link / "b2b", idle_link / "idle", idle_link / "idle30"])


def test_the_schedule_gives_credit_after_compute_and_none_to_a_queued_collective(idle_link):
    """manual, two 1 MB buckets, no jitter; forward 10, backward 20, optimizer 5, other 1; the 8 B loss
    all-reduce 0.1 ms (back to back). Hand-derived from the tables above."""
    comm = inter_tables(f"2x1={idle_link / 'b2b'},2x1={idle_link / 'idle'}")["2x1"]

    def step(ready0, ready1, table=comm):
        t = Timeline(pre_ms=10.0, backward_ms=20.0, post_ms={"optimizer": 5.0}, other_ms=1.0,
                     buckets=[BucketTiming(0, MB, ready0), BucketTiming(1, MB, ready1)])
        p = simulate(t, table, 2, "manual")
        return p.step_ms, [(e.start_ms, e.end_ms) for e in p.schedule]

    # bucket 0 at 15 after an idle link (6 ms: 15-21); bucket 1 at 30, the link idle 9 ms: 9 - 0.9·3 = 6.3 ms
    ms, events = step(5.0, 20.0)
    assert events == pytest.approx([(15, 21), (30, 36.3)]) and ms == pytest.approx(36.3 + 5 + 0.1 + 1)
    # both launched at 28 (the order rule): the second queues behind the first and gets no credit (34-43)
    ms, events = step(18.0, 2.0)
    assert events == pytest.approx([(28, 34), (34, 43)]) and ms == pytest.approx(43 + 5 + 0.1 + 1)
    # the back-to-back table alone: 15-24 and 30-39, as before idle tables existed
    ms, events = step(5.0, 20.0, comm_from_table([idle_link / "b2b"]))
    assert events == pytest.approx([(15, 24), (30, 39)]) and ms == pytest.approx(39 + 5 + 0.1 + 1)


def test_fsdp_tells_the_comm_model_how_long_the_link_sat_idle_before_each_collective():
    """FSDP without prefetch (CPU/gloo), every collective 5 ms. The tiny model's FLOP shares: each block 5616 of
    12000 (0.468), the root 768 (0.064); forward 30 ms (block 14.04, root 1.92), backward 60 (28.08, 3.84).
    Forward: root gather 0-5 (first: idle since the last step), h.0's queued behind it 5-10, h.1's after h.0's
    forward (idle 14.04). Backward: the root's lm_head (3.84) after h.1's forward (14.04) and the root's (1.92),
    so h.1's gather after 19.8 idle; h.1's reduce-scatter after its backward (28.08); h.0's gather right behind
    it (0); h.0's reduce-scatter after its backward (28.08); the root's right behind it (0)."""
    asked = []

    def comm(op, nbytes, n, idle_ms=0.0):
        asked.append((op, idle_ms))
        return 5.0

    comm.reads_idle = True
    t = Timeline(pre_ms=30.0, backward_ms=60.0, post_ms={"optimizer": 8.0}, other_ms=0.0, buckets=[],
                 model={"n_layer": 2, "n_embd": 8, "n_head": 2, "vocab_size": 16, "seq_len": 4})
    simulate(t, comm, 2, "fsdp", prefetch=False)
    ops = [op for op, _ in asked[:8]]
    assert ops == ["all_gather"] * 4 + ["reduce_scatter", "all_gather", "reduce_scatter", "reduce_scatter"]
    assert [i for _, i in asked[:8]] == pytest.approx([math.inf, 0, 14.04, 19.8, 28.08, 0, 28.08, 0])
    assert asked[8:] == [("all_reduce", 0.0)] * 2  # the 8-byte grad-norm and loss all-reduces: back to back
