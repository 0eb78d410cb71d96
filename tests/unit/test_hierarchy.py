"""Figures derived from plugin statistics recorded in a real blade (tests/data/plugin)."""

from __future__ import annotations

import json

import pytest

from orchestrator.hierarchy import figures
from orchestrator.testbed import node_latencies
from tests.conftest import DATA

STATS = json.loads((DATA / "plugin" / "cb0-stats.json").read_text())
CONFIG = json.loads((DATA / "plugin" / "cb0-config.json").read_text())


def test_node_latencies_from_plugin_config() -> None:
    assert node_latencies(CONFIG) == {0: 100.0, 1: 250.0}


def test_amat_chain() -> None:
    fig = figures(STATS, {"l1d": 1, "l2": 4, "llc": 15}, {0: 100.0, 1: 250.0})
    total = STATS["total"]
    assert [lv.name for lv in fig.levels] == ["l1d", "l2", "llc"]
    l1, l2, llc = fig.levels
    assert l1.hits == total["levels"]["l1d"]["hits"] and l1.misses == total["levels"]["l1d"]["misses"]
    # every miss of a level is an access of the next one
    assert l1.misses == l2.accesses and l2.misses == llc.accesses
    nodes = {n["node"]: n["memory"] for n in total["nodes"]}
    assert llc.misses == nodes[0] + nodes[1]
    queue = STATS["blades"][0]["queue_ns"]
    memory = (nodes[0] * 100 + nodes[1] * 250 + queue) / (nodes[0] + nodes[1])
    assert fig.memory_amat_ns == pytest.approx(memory)
    assert llc.amat_ns == pytest.approx(15 + llc.miss_ratio * memory)
    assert l2.amat_ns == pytest.approx(4 + l2.miss_ratio * llc.amat_ns)
    assert l1.amat_ns == pytest.approx(1 + l1.miss_ratio * l2.amat_ns)
    assert 1 < l1.amat_ns < l2.amat_ns < llc.amat_ns < fig.memory_amat_ns


def test_no_accesses_is_zero_not_an_error() -> None:
    empty = {"total": {"insns": 0, "loads": 0, "stores": 0, "modelled_stall_ns": 0, "injected_ns": 0,
                       "levels": {"l1d": {"hits": 0, "misses": 0}}, "nodes": [{"node": 0, "accesses": 0, "memory": 0}]}}
    fig = figures(empty, {"l1d": 1}, {0: 100})
    assert fig.levels[0].miss_ratio == 0 and fig.levels[0].amat_ns == 1 and fig.memory_amat_ns == 0
