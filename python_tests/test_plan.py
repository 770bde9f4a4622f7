"""Routing plan: sorted, stable, dropless, static-shaped, traceable without host reads."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from rtl_kernels.routing_plans.plan import block_schedule, make_plan


@given(k=st.integers(1, 40), m=st.integers(0, 200), seed=st.integers(0, 2**31 - 1), block=st.integers(1, 64))
def test_plan_groups_rows_by_ticket_stably_and_drops_nothing(k, m, seed, block):
    g = torch.Generator().manual_seed(seed)
    routes = torch.randint(0, k, (m,), generator=g)
    plan = make_plan(routes, k)
    assert plan.num_tickets == k and plan.num_rows == m
    assert sorted(plan.perm.tolist()) == list(range(m))  # a permutation: dropless
    assert torch.equal(plan.counts, torch.bincount(routes, minlength=k))
    for t in range(k):
        rows = plan.perm[plan.offsets[t] : plan.offsets[t + 1]]
        assert torch.equal(rows, torch.nonzero(routes == t).flatten())  # stable: original order kept
    sched = block_schedule(plan, block)
    assert sched.max_blocks == (m + block - 1) // block + k
    covered = []
    for b in range(sched.max_blocks):
        t = int(sched.block_ticket[b])
        if t < 0:
            continue
        start, end = int(sched.block_start[b]), int(sched.block_end[b])
        assert plan.offsets[t] <= start < end == plan.offsets[t + 1]
        covered.extend(range(start, min(start + block, end)))
    assert covered == list(range(m))  # every sorted row is in exactly one block, in order


def test_plan_is_deterministic_and_handles_empty_batches():
    routes = torch.tensor([3, 1, 3, 0, 1, 3])
    a, b = make_plan(routes, 5), make_plan(routes.clone(), 5)
    assert torch.equal(a.perm, b.perm) and torch.equal(a.offsets, b.offsets)
    assert a.offsets.tolist() == [0, 1, 3, 3, 6, 6]
    empty = make_plan(torch.zeros(0, dtype=torch.long), 3)
    assert empty.offsets.tolist() == [0, 0, 0, 0] and empty.perm.numel() == 0


def test_repeat_rows_matches_a_plan_of_expanded_routes():
    routes = torch.tensor([2, 0, 2, 1])
    expanded = make_plan(routes.repeat_interleave(3), 3)
    repeated = make_plan(routes, 3).repeat_rows(3)
    assert torch.equal(expanded.perm, repeated.perm)
    assert torch.equal(expanded.offsets, repeated.offsets)
    assert torch.equal(expanded.routes, repeated.routes)


def test_plan_traces_with_fullgraph_compile():
    # fullgraph fails on any host read (.item(), .tolist(), data-dependent shapes)
    fn = torch.compile(lambda r: (make_plan(r, 4).perm, block_schedule(make_plan(r, 4), 8).block_ticket), fullgraph=True)
    routes = torch.tensor([3, 0, 3, 1, 1])
    perm, tickets = fn(routes)
    assert perm.tolist() == [1, 3, 4, 0, 2]
    assert tickets.tolist()[:3] == [0, 1, 3]


@given(k=st.integers(1, 20), m=st.integers(0, 300), seed=st.integers(0, 2**31 - 1))
def test_numpy_and_torch_plans_are_identical(k, m, seed):
    """Small eager CPU plans are built with numpy, others with torch ops: both give the same plan."""
    import rtl_kernels.routing_plans.plan as plan_module

    routes = torch.randint(0, k, (m,), generator=torch.Generator().manual_seed(seed))
    fast = make_plan(routes, k)
    limit = plan_module._NUMPY_MAX_ROWS
    plan_module._NUMPY_MAX_ROWS = -1  # force the torch path
    try:
        slow = make_plan(routes, k)
    finally:
        plan_module._NUMPY_MAX_ROWS = limit
    for a, b in ((fast.perm, slow.perm), (fast.offsets, slow.offsets), (fast.routes, slow.routes)):
        assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
