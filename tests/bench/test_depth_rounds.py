"""Figure 9's rounds (``bench.fig_depth.depth_rounds``): three for each of the bench's, as many
as the deep backlog holds with one stretch left for the probes, never fewer than the bench's."""

from __future__ import annotations

import json

from tm_testing import run_in_repo

DRIVER = """
import json, sys
from pathlib import Path
from bench.context import BacklogSizes, Context
from bench.fig_depth import depth_rounds, stretch_tasks
rounds, depth, quick = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "quick"
backlog = BacklogSizes.quick(depth) if quick else BacklogSizes.full(depth)
ctx = Context(None, None, rounds, Path("."), backlog)
print(json.dumps({"rounds": depth_rounds(ctx), "stretch": stretch_tasks(ctx)}))
"""


def figure_rounds(rounds: int, depth: int, sizes: str = "full") -> tuple[int, int]:
    done = run_in_repo(DRIVER, str(rounds), str(depth), sizes)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    return result["rounds"], result["stretch"]


def test_three_rounds_for_each_of_the_bench_where_the_backlog_holds_them() -> None:
    # A 1,000,000-task backlog, 21,000 tasks a stretch: 5 bench rounds make 15, 1 makes 3
    assert figure_rounds(5, 1_000_000) == (15, 21_000)
    assert figure_rounds(1, 1_000_000) == (3, 21_000)


def test_a_smaller_backlog_gives_as_many_as_it_holds_with_a_stretch_left() -> None:
    # 200,000 tasks hold 9 stretches of 21,000: 8 rounds, the ninth for the probes
    rounds, stretch = figure_rounds(5, 200_000)
    assert rounds == 8
    assert (rounds + 1) * stretch <= 200_000 < (rounds + 2) * stretch


def test_never_fewer_rounds_than_the_bench_asks_for() -> None:
    # The quick sizes (12,000 tasks, stretches of 4,200) hold one round: the bench's one stays
    assert figure_rounds(1, 12_000, "quick") == (1, 4_200)
    # and a backlog too small for the bench's rounds is left to the figure to refuse
    assert figure_rounds(4, 12_000, "quick") == (4, 4_200)
