"""ec2.remote.nodes.on_each: work on every node of a cluster at once."""

from __future__ import annotations

from ec2.remote import nodes


def test_work_on_no_node_is_no_work():
    # A cluster whose every run stopped resumably on machines that are all still there restarts
    # with no new node to set up: on_each of none must not fail (a pool of 0 workers would).
    assert nodes.on_each([], lambda m: 1 / 0) == []
