"""Flow benchmarks: how much one function's trouble slows another function of the same tenant.

    .venv/bin/python bench/flow_bench.py --scenario b

Starts its own platform, with the default settings unless `--setting NAME=VALUE` says
otherwise (a gateway and a scheduler, as the tests do: a MongoDB-wire server of its
own, a RabbitMQ vhost of its own, the local Docker engine and the runtime image) and
one tenant. Each scenario first runs
`--b-tasks` no-op tasks of function B alone, then the same with the trouble going
on, in the same run on the same platform, and reports B's p95 completion time (from
its submission to its final status, as its task record's history has them) both
times and their ratio.

(a) a function at its concurrency with a backlog: function A (`max_concurrency` 1,
    1 s a task) with `--a-tasks` (100) queued, then `--b-tasks` (300) 10 ms tasks of
    function B. Target: ratio <= 1.5.
(b) a destination that hangs: function A (a no-op, default max_concurrency) has an
    `on_success` webhook to a server that accepts connections and never answers;
    `--a-tasks` (200) A tasks are submitted, then the B tasks. Target: ratio <= 1.5.
    As a control, the same with A0, a copy of A without a destination: what B's
    tasks pay for queueing behind A's alone. Then the server starts answering, and
    the bench reports how long the A records took to be delivered (or given up by
    policy) from there.

(d) a burst: `--d-tasks` (500) tasks of 200 ms at `max_concurrency` 20, on a function
    never run, then again: the time from the first submission to the last final
    status against the ideal 5 s (target 1.15x), and when the 20th started running
    (target 0.5 s).

(e) a first burst of short tasks: `--e-tasks` (300) tasks of 10 ms at `max_concurrency`
    20 on a function never run, then the same burst again: the first burst's p95
    completion against the second's (target 2x).

`--busy` runs other functions' bursts first, from another tenant (`--fill-functions`
functions of `--fill-concurrency` containers each), so that the scenario runs on a
platform whose container slots are held by their idle warm containers, as on a
platform that has done other work.

A scenario is a function of (platform, tenant, args) returning its figures, listed in
SCENARIOS; `--scenario` picks one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from common import bench_platform, fill, log, machine, parse_settings, percentile, pool_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hanging import HangingWebhook  # noqa: E402
from tests.harness import (  # noqa: E402
    FINAL_STATUSES,
    Platform,
    deploy,
    invoke,
    list_all_tasks,
    submit_event,
)

RATIO_TARGET = 1.5  # B's p95 with the trouble over B's p95 alone
SUBMIT_THREADS = 16


def submit(client: httpx.Client, name: str, n: int) -> list[str]:
    """`n` async invocations of `name`, sent from SUBMIT_THREADS threads; their task ids."""

    def one(i: int) -> str:
        r = submit_event(client, name, {"i": i})
        if r.status_code != 202:
            raise SystemExit(f"submitting {name}: {r.status_code} {r.text[:300]}")
        return str(r.headers["x-task-id"])

    with ThreadPoolExecutor(SUBMIT_THREADS) as threads:
        return list(threads.map(one, range(n)))


def wait_final(client: httpx.Client, name: str, ids: list[str], timeout: float,
               done: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, dict[str, Any]]:
    """Poll the task list of `name` until each of `ids` is final (and `done` holds)."""
    wanted, deadline = set(ids), time.monotonic() + timeout
    while True:
        tasks = {t["task_id"]: t for t in list_all_tasks(client, limit=500, function=name)
                 if t["task_id"] in wanted}
        ready = [t for t in tasks.values()
                 if t["status"] in FINAL_STATUSES and (done is None or done(t))]
        if len(ready) == len(wanted):
            return tasks
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: {len(ready)} of {len(wanted)} tasks done after {timeout:g} s")
        time.sleep(0.25)


def completion_s(task: dict[str, Any]) -> float:
    """From submission to the final status, as the task record's history has them."""
    created = datetime.fromisoformat(task["created_at"].replace("Z", "+00:00"))
    final = datetime.fromisoformat(task["history"][-1]["at"].replace("Z", "+00:00"))
    return (final - created).total_seconds()


def figures(times: list[float]) -> dict[str, float]:
    return {"p50_s": round(percentile(times, 0.5), 3), "p95_s": round(percentile(times, 0.95), 3),
            "max_s": round(max(times), 3)}


def deploy_noop(client: httpx.Client, name: str, config: dict[str, Any]) -> None:
    r = deploy(client, name, "noop", config)
    if r.status_code not in (200, 201):
        raise SystemExit(f"deploying {name}: {r.status_code} {r.text[:300]}")
    invoke(client, name).raise_for_status()  # its first container started before the clock


def run_b(client: httpx.Client, n: int, timeout: float) -> dict[str, float]:
    """B's tasks from submission to their final status."""
    ids = submit(client, "b", n)
    tasks = wait_final(client, "b", ids, timeout)
    return figures([completion_s(t) for t in tasks.values()])


# -- (b) a destination that hangs ------------------------------------------------------


def scenario_b(platform: Platform, client: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    with HangingWebhook() as hook:
        deploy_noop(client, "a", {"async": {"on_success": {"type": "webhook", "url": hook.url}}})
        deploy_noop(client, "a0", {})
        deploy_noop(client, "b", {})
        log(f"(b) warm-up: {args.warmup} tasks of b")
        run_b(client, args.warmup, args.timeout)
        log(f"(b) alone: {args.b_tasks} tasks of b")
        alone = run_b(client, args.b_tasks, args.timeout)
        log(f"(b) control: {args.a_tasks} tasks of a0 (no destination), then {args.b_tasks} tasks of b")
        a0_ids = submit(client, "a0", args.a_tasks)
        with_a0 = run_b(client, args.b_tasks, args.timeout)
        wait_final(client, "a0", a0_ids, args.timeout)
        log(f"(b) {args.a_tasks} tasks of a (on_success: a webhook that never answers), "
            f"then {args.b_tasks} tasks of b")
        started = time.monotonic()
        a_ids = submit(client, "a", args.a_tasks)
        with_a = run_b(client, args.b_tasks, args.timeout)
        a_tasks = wait_final(client, "a", a_ids, args.timeout)
        a_done_s = time.monotonic() - started
        pending = sum(1 for t in a_tasks.values() if (t["destination"] or {}).get("status") == "pending")
        log(f"(b) the webhook answers from now on; waiting for the {args.a_tasks} A records")
        hook.answer()
        answered = time.monotonic()
        a_tasks = wait_final(client, "a", a_ids, args.timeout,
                             done=lambda t: (t["destination"] or {}).get("status") != "pending")
        settled_s = time.monotonic() - answered
    outcomes = [t["destination"]["status"] for t in a_tasks.values()]
    return {
        "b_alone": alone,
        "b_behind_a": with_a,
        "ratio_p95": round(with_a["p95_s"] / alone["p95_s"], 3),
        "b_behind_a0_without_destination": with_a0,
        "ratio_p95_without_destination": round(with_a0["p95_s"] / alone["p95_s"], 3),
        "a": {
            "tasks": args.a_tasks,
            "completion": figures([completion_s(t) for t in a_tasks.values()]),
            "all_final_after_s": round(a_done_s, 3),
            "records_pending_then": pending,
            "after_the_webhook_answered": {
                "settled_s": round(settled_s, 3),
                "delivered": outcomes.count("delivered"),
                "failed": outcomes.count("failed"),
                "posts_answered": len(hook.task_ids(answered=True)),
            },
        },
    }


def summary_b(r: dict[str, Any]) -> list[str]:
    verdict = "met" if r["ratio_p95"] <= RATIO_TARGET else "MISSED"
    a = r["a"]
    after = a["after_the_webhook_answered"]
    return [
        f"(b) B p95 {r['b_behind_a']['p95_s']} s behind A's hanging webhook, {r['b_alone']['p95_s']} s "
        f"alone: ratio {r['ratio_p95']}; target <= {RATIO_TARGET}: {verdict}",
        f"    control: B p95 {r['b_behind_a0_without_destination']['p95_s']} s behind as many tasks "
        f"of A0, a copy of A without a destination: ratio {r['ratio_p95_without_destination']}",
        f"    A: {a['tasks']} tasks final after {a['all_final_after_s']} s (p95 completion "
        f"{a['completion']['p95_s']} s), {a['records_pending_then']} records pending in the outbox; "
        f"once the webhook answered: {after['delivered']} delivered, {after['failed']} given up, "
        f"in {after['settled_s']} s",
    ]


# -- (a) a function at its concurrency with a backlog ------------------------------------


def submit_payload(client: httpx.Client, name: str, n: int, payload: Any) -> list[str]:
    """`n` async invocations of `name` with `payload`, from SUBMIT_THREADS threads."""

    def one(_: int) -> str:
        r = submit_event(client, name, payload)
        if r.status_code != 202:
            raise SystemExit(f"submitting {name}: {r.status_code} {r.text[:300]}")
        return str(r.headers["x-task-id"])

    with ThreadPoolExecutor(SUBMIT_THREADS) as threads:
        return list(threads.map(one, range(n)))


def run_sleepers(client: httpx.Client, name: str, n: int, seconds: float,
                 timeout: float) -> dict[str, dict[str, Any]]:
    return wait_final(client, name, submit_payload(client, name, n, {"seconds": seconds}), timeout)


def deploy_sleep(client: httpx.Client, name: str, config: dict[str, Any]) -> None:
    r = deploy(client, name, "sleep", config)
    if r.status_code not in (200, 201):
        raise SystemExit(f"deploying {name}: {r.status_code} {r.text[:300]}")
    invoke(client, name, {"seconds": 0}).raise_for_status()


def scenario_a(platform: Platform, client: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    """A (max_concurrency 1, 1 s a task) with `--a-tasks` queued, then B's 10 ms tasks."""
    deploy_sleep(client, "a", {"max_concurrency": 1})
    deploy_sleep(client, "b", {})
    log(f"(a) warm-up: {args.warmup} tasks of b")
    run_sleepers(client, "b", args.warmup, 0.01, args.timeout)
    log(f"(a) alone: {args.b_tasks} tasks of b (10 ms)")
    alone = figures([completion_s(t) for t in
                     run_sleepers(client, "b", args.b_tasks, 0.01, args.timeout).values()])
    log(f"(a) {args.a_tasks} tasks of a (1 s, max_concurrency 1), then {args.b_tasks} tasks of b")
    a_ids = submit_payload(client, "a", args.a_tasks, {"seconds": 1.0})
    behind = figures([completion_s(t) for t in
                      run_sleepers(client, "b", args.b_tasks, 0.01, args.timeout).values()])
    described = client.get("/v1/functions/a").json()
    log(f"(a) waiting for a's {args.a_tasks} tasks (about {args.a_tasks} s)")
    a_tasks = wait_final(client, "a", a_ids, args.timeout + args.a_tasks)
    statuses = [t["status"] for t in a_tasks.values()]
    return {
        "b_alone": alone,
        "b_behind_a": behind,
        "ratio_p95": round(behind["p95_s"] / alone["p95_s"], 3),
        "a": {
            "tasks": args.a_tasks,
            "succeeded": statuses.count("Succeeded"),
            "ran_more_than_once": sum(1 for t in a_tasks.values()
                                      if t.get("approximate_invoke_count", 1) > 1),
            "queue_mode_while_busy": described.get("queue_mode"),
            "queue_reason": described.get("queue_reason"),
        },
    }


def summary_a(r: dict[str, Any]) -> list[str]:
    verdict = "met" if r["ratio_p95"] <= RATIO_TARGET else "MISSED"
    a = r["a"]
    return [
        f"(a) B p95 {r['b_behind_a']['p95_s']} s behind A's backlog, {r['b_alone']['p95_s']} s "
        f"alone: ratio {r['ratio_p95']}; target <= {RATIO_TARGET}: {verdict}",
        f"    A: {a['succeeded']} of {a['tasks']} succeeded, {a['ran_more_than_once']} ran more than "
        f"once; queue_mode {a['queue_mode_while_busy']} ({a['queue_reason']})",
    ]


# -- (d) a burst at max_concurrency 20 ----------------------------------------------------


def scenario_d(platform: Platform, client: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    """500 tasks of 200 ms at max_concurrency 20: the makespan against the ideal 5 s, and
    how soon 20 run. Twice: on a function never run (cold), then again (warm)."""
    n, seconds, concurrency = args.d_tasks, 0.2, 20
    ideal = n * seconds / concurrency
    deploy_sleep(client, "d", {"max_concurrency": concurrency})
    rounds = {}
    for label in ("first", "again"):
        log(f"(d) {label}: {n} tasks of 200 ms at max_concurrency {concurrency}")
        started = datetime.now(UTC)
        ids = submit_payload(client, "d", n, {"seconds": seconds})
        tasks = wait_final(client, "d", ids, args.timeout)
        runs = sorted(
            (_at(h["at"]), t["task_id"]) for t in tasks.values() for h in t["history"]
            if h["status"] == "Running"
        )
        ends = [_at(t["history"][-1]["at"]) for t in tasks.values()]
        first_submit = min(_at(t["created_at"]) for t in tasks.values())
        last_submit = max(_at(t["created_at"]) for t in tasks.values())
        makespan = (max(ends) - first_submit).total_seconds()
        twentieth = None
        if len(runs) >= concurrency:
            twentieth = (runs[concurrency - 1][0] - first_submit).total_seconds()
        rounds[label] = {
            "makespan_s": round(makespan, 3),
            "ratio_to_ideal": round(makespan / ideal, 3),
            "twentieth_running_after_s": None if twentieth is None else round(twentieth, 3),
            "submitted_within_s": round((last_submit - first_submit).total_seconds(), 3),
            "until_all_seen_final_s": round((datetime.now(UTC) - started).total_seconds(), 3),
            "succeeded": sum(1 for t in tasks.values() if t["status"] == "Succeeded"),
            "starts": dict(Counter((t.get("timings") or {}).get("start") for t in tasks.values())),
        }
    return {"ideal_s": ideal, "tasks": n, **rounds}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def summary_d(r: dict[str, Any]) -> list[str]:
    lines = []
    for label in ("first", "again"):
        x = r[label]
        twentieth = x["twentieth_running_after_s"]
        on_time = twentieth is not None and twentieth <= 0.5
        met = "met" if x["ratio_to_ideal"] <= 1.15 and on_time else "MISSED"
        lines.append(
            f"(d) {label}: {x['succeeded']} of {r['tasks']} done in {x['makespan_s']} s, "
            f"{x['ratio_to_ideal']}x the ideal {r['ideal_s']} s; 20 running after "
            f"{x['twentieth_running_after_s']} s; targets 1.15x and 0.5 s: {met} (starts {x['starts']})"
        )
    return lines


# -- (e) a first burst of short tasks ----------------------------------------------------


def scenario_e(platform: Platform, client: httpx.Client, args: argparse.Namespace) -> dict[str, Any]:
    """300 tasks of 10 ms at max_concurrency 20 on a function never run, then again."""
    deploy_sleep(client, "e", {"max_concurrency": 20})
    rounds = {}
    for label in ("first", "again"):
        log(f"(e) {label}: {args.e_tasks} tasks of 10 ms at max_concurrency 20")
        tasks = run_sleepers(client, "e", args.e_tasks, 0.01, args.timeout)
        rounds[label] = {
            **figures([completion_s(t) for t in tasks.values()]),
            "starts": dict(Counter((t.get("timings") or {}).get("start") for t in tasks.values())),
        }
    return {"tasks": args.e_tasks, **rounds,
            "ratio_p95": round(rounds["first"]["p95_s"] / rounds["again"]["p95_s"], 3)}


def summary_e(r: dict[str, Any]) -> list[str]:
    verdict = "met" if r["ratio_p95"] <= 2.0 else "MISSED"
    return [
        f"(e) first burst p95 {r['first']['p95_s']} s (starts {r['first']['starts']}), the second's "
        f"{r['again']['p95_s']} s: ratio {r['ratio_p95']}; target <= 2: {verdict}",
    ]


SCENARIOS: dict[str, tuple[Callable[[Platform, httpx.Client, argparse.Namespace], dict[str, Any]],
                           Callable[[dict[str, Any]], list[str]]]] = {
    "a": (scenario_a, summary_a),
    "b": (scenario_b, summary_b),
    "d": (scenario_d, summary_d),
    "e": (scenario_e, summary_e),
}
# The figures: (a) 100 tasks of A then 300 of B; (b) 200 of A then 100 of B.
DEFAULT_TASKS = {"a": (100, 300), "b": (200, 100), "d": (0, 0), "e": (0, 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="b")
    parser.add_argument("--a-tasks", type=int, default=None,
                        help="tasks of the function in trouble (default: (a) 100, (b) 200)")
    parser.add_argument("--b-tasks", type=int, default=None,
                        help="tasks of the function measured (default: (a) 300, (b) 100)")
    parser.add_argument("--d-tasks", type=int, default=500, help="(d) tasks of the burst")
    parser.add_argument("--e-tasks", type=int, default=300, help="(e) tasks of the burst")
    parser.add_argument("--busy", action="store_true",
                        help="fill the container slots with other functions' bursts first")
    parser.add_argument("--fill-functions", type=int, default=8)
    parser.add_argument("--fill-concurrency", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20, help="B tasks run before measuring")
    parser.add_argument("--timeout", type=float, default=300, help="limit of each wait")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting of the platform (FNHOST_NAME), for example "
                        "--setting async_prefetch=16; the defaults otherwise")
    args = parser.parse_args()
    a_tasks, b_tasks = DEFAULT_TASKS[args.scenario]
    args.a_tasks = a_tasks if args.a_tasks is None else args.a_tasks
    args.b_tasks = b_tasks if args.b_tasks is None else args.b_tasks
    settings = parse_settings(args.setting)
    run, summary = SCENARIOS[args.scenario]
    report: dict[str, Any] = {"scenario": args.scenario, "machine": machine(), "settings": vars(args)}
    with bench_platform(**settings) as platform, platform.new_tenant() as client:
        if args.busy:
            log(f"busy: {args.fill_functions} functions x {args.fill_concurrency} containers "
                "of another tenant first")
            with platform.new_tenant() as other:
                fill(other, args.fill_functions, args.fill_concurrency, 0.5)
            report["pool_after_fill"] = pool_state(platform)
        report["figures"] = run(platform, client, args)
    print(json.dumps(report, indent=2))
    print()
    for line in summary(report["figures"]):
        print(line)


if __name__ == "__main__":
    main()
