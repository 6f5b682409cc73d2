"""``pploy client``: status, locks, checkout and deploy from a terminal or a CI step.

Talks to ``PPLOY_URL`` with the API token in ``PPLOY_TOKEN`` (made on pploy's "API tokens"
page or with ``POST /api/tokens``); the token is read from the environment only, never from
the command line (where ``ps`` would show it). A deploy or checkout follows its log live and
exits with the job's result, so a CI step is one line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from pploy.client.api import Api, ApiError, segment
from pploy.client.follow import Follower

DEFAULT_URL = "http://127.0.0.1:9999/"

# Exit statuses (documented in --help and docs/api.md).
OK, JOB_FAILED, USAGE, REFUSED, LOST, INTERRUPTED = 0, 1, 2, 3, 4, 130

DESCRIPTION = """\
pploy's API from a terminal or CI: PPLOY_URL (default http://127.0.0.1:9999/) and
PPLOY_TOKEN (an API token: pploy's "API tokens" page, or POST /api/tokens).
`deploy` and `checkout` follow the job's log live (raw bytes: colours survive), resume from
the byte reached after a dropped connection, and exit with the job's result.
"""

EPILOG = """\
exit status: 0 the job succeeded (or the command did); 1 the job failed, was cancelled,
timed out or was interrupted; 2 usage error; 3 pploy refused the request (the reason is
printed); 4 the connection was lost for good; 130 interrupted (Ctrl-C) while following.

examples:
  export PPLOY_URL=https://deploy.example.com PPLOY_TOKEN=pploy_…
  pploy client status
  pploy client lock myapp gain
  pploy client checkout myapp main
  pploy client deploy myapp production --cancel-on-interrupt
  pploy client lock myapp release
  pploy client queue myapp              # wait in line for the lock
  pploy client approve 42 --follow      # another approver's deploy
  pploy client freezes start incident --until 2027-01-04T00:00:00+09:00 --reason "db down"
"""


def _say(text: str) -> None:
    print(f"[pploy client] {text}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """The command cannot run as given (exit status 2, not 1: 1 is a failed job's)."""


def _api() -> Api:
    token = os.environ.get("PPLOY_TOKEN", "").strip()
    if not token:
        raise UsageError('set PPLOY_TOKEN to an API token (pploy\'s "API tokens" page)')
    try:
        return Api(os.environ.get("PPLOY_URL") or DEFAULT_URL, token)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _lock_text(lock: dict[str, Any] | None) -> str:
    if not lock:
        return "unlocked"
    return f"locked by {lock['user']} ({lock['seconds_left'] / 60:.1f} min left)"


def cmd_status(api: Api, args: argparse.Namespace) -> int:
    if args.project:
        project = api.call("GET", f"/api/projects/{segment(args.project)}")["project"]
        if args.json:
            _print_json(project)
            return OK
        print(f"{project['name']}: {_lock_text(project.get('lock'))}")
        print(f"  environments: {', '.join(project.get('envs') or [])}")
        running = project.get("running_job")
        if running:
            print(f"  running: #{running['id']} {running['kind']} by {running['user']}")
        return OK
    status = api.call("GET", "/api/status")
    if args.json:
        _print_json(status)
        return OK
    print(f"signed in as {status['user']}")
    for project in status["projects"]:
        print(f"{project['name']}: {_lock_text(project.get('lock'))}")
    return OK


def cmd_add(api: Api, args: argparse.Namespace) -> int:
    project = api.call("POST", "/api/projects", {"url": args.url})["project"]
    print(f"added {project['name']}")
    return OK


def cmd_remove(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/api/projects/{segment(args.project)}")
    print(f"removed {args.project}")
    return OK


def cmd_lock(api: Api, args: argparse.Namespace) -> int:
    path = f"/api/projects/{segment(args.project)}/lock"
    lock = api.call("POST", path, {"operation": args.operation})["lock"]
    print(f"{args.project}: {_lock_text(lock)}")
    return OK


def cmd_cancel(api: Api, args: argparse.Namespace) -> int:
    api.call("POST", f"/api/jobs/{args.job}/cancel", {})
    print(f"cancelling job #{args.job}")
    return OK


def follow_job(api: Api, job_id: int, offset: int, cancel_on_interrupt: bool) -> int:
    """Follow job ``job_id`` to its end; the exit status for its result. Ctrl-C cancels the
    job when asked to (and keeps following until it has ended), else stops following."""
    out = sys.stdout.buffer
    follower = Follower(api, job_id, out, offset=offset, say=_say)
    cancelled = False
    while True:
        try:
            record = follower.run()
            break
        except KeyboardInterrupt:
            if not cancel_on_interrupt or cancelled:
                _say(
                    f"stopped following; job #{job_id} goes on: "
                    f"pploy client log {job_id} --offset {follower.offset}"
                    if not cancelled
                    else f"stopped following job #{job_id} while it is being cancelled"
                )
                return INTERRUPTED
            cancelled = True
            try:
                api.call("POST", f"/api/jobs/{job_id}/cancel", {})
                _say(f"cancelling job #{job_id} (Ctrl-C again to stop following)")
            except ApiError as exc:
                _say(f"could not cancel job #{job_id}: {exc.message}")
                return INTERRUPTED
    status = record["status"]
    if status == "succeeded":
        _say(f"job #{job_id} succeeded")
        return OK
    detail = f" (exit {record['exit_code']})" if record.get("exit_code") is not None else ""
    _say(f"job #{job_id} {status}{detail}")
    return JOB_FAILED


def _start(api: Api, args: argparse.Namespace, kind: str, body: dict[str, str]) -> int:
    path = f"/api/projects/{segment(args.project)}/{kind}"
    job = api.call("POST", path, body)["job"]
    _say(f"job #{job['id']}: {kind} {args.project} {next(iter(body.values()))}")
    if job["status"] == "awaiting_approval":  # docs/governance.md
        return awaiting(job)
    if args.no_follow:
        print(job["id"])
        return OK
    return follow_job(api, job["id"], 0, args.cancel_on_interrupt)


def cmd_deploy(api: Api, args: argparse.Namespace) -> int:
    extra = {"override_freeze": args.override_freeze} if args.override_freeze else {}
    return _start(api, args, "deploy", {"env": args.env, **extra})


def cmd_checkout(api: Api, args: argparse.Namespace) -> int:
    return _start(api, args, "checkout", {"ref": args.ref})


def cmd_log(api: Api, args: argparse.Namespace) -> int:
    return follow_job(api, args.job, args.offset, args.cancel_on_interrupt)


# -- governance (issue 25; docs/governance.md) ----------------------------------------------


def awaiting(job: dict[str, Any]) -> int:
    """A deploy that waits for approval: say so and how it goes on (nothing runs yet)."""
    _say(f"job #{job['id']} awaits approval by another approver: pploy client approve {job['id']}")
    print(job["id"])
    return OK


def cmd_queue(api: Api, args: argparse.Namespace) -> int:
    path = f"/api/projects/{segment(args.project)}"
    operation = "leave" if args.leave else "queue"
    api.call("POST", path + "/lock", {"operation": operation})
    lock = api.call("GET", path)["project"]["lock"]
    waiting = [q["user"] for q in (lock or {}).get("queue", [])]
    print(f"{args.project}: {_lock_text(lock)}; waiting: {', '.join(waiting) or 'nobody'}")
    return OK


def cmd_approve(api: Api, args: argparse.Namespace) -> int:
    job = api.call("POST", f"/api/jobs/{args.job}/approve", {})["job"]
    _say(f"approved job #{job['id']}: deploy {job['project']} to {job['env']}")
    return follow_job(api, job["id"], 0, False) if args.follow else OK


def cmd_reject(api: Api, args: argparse.Namespace) -> int:
    job = api.call("POST", f"/api/jobs/{args.job}/reject", {})["job"]
    print(f"job #{job['id']} {job['status']}")
    return OK


def cmd_freezes(api: Api, args: argparse.Namespace) -> int:
    if args.action == "start":
        body = {"name": args.name, "until": args.until, "reason": args.reason}
        if args.env:
            body["envs"] = args.env
        api.call("POST", "/api/freezes", body)
    elif args.action == "end":
        api.call("DELETE", f"/api/freezes/{segment(args.name or '')}")
    freezes = api.call("GET", "/api/freezes")["freezes"]
    if args.json:
        _print_json(freezes)
        return OK
    for f in freezes:
        state = "IN FORCE" if f["active"] else "inactive"
        print(f"{f['name']} [{state}] {f['start']} .. {f['end']} envs={','.join(f['envs'])} "
              f"projects={','.join(f['projects'])} {f['reason']}")  # fmt: skip
    return OK


def _governance_commands(commands: Any) -> None:
    queue = commands.add_parser("queue", help="wait in line for a project's lock (or --leave)")
    queue.add_argument("project")
    queue.add_argument("--leave", action="store_true", help="leave the queue")
    queue.set_defaults(client_func=cmd_queue)

    approve = commands.add_parser("approve", help="approve a deploy awaiting approval")
    approve.add_argument("job", type=int)
    approve.add_argument("--follow", action="store_true", help="follow the deploy it starts")
    approve.set_defaults(client_func=cmd_approve)

    reject = commands.add_parser("reject", help="reject a deploy awaiting approval")
    reject.add_argument("job", type=int)
    reject.set_defaults(client_func=cmd_reject)

    freezes = commands.add_parser("freezes", help="list deploy freezes; start or end one")
    freezes.add_argument("action", nargs="?", choices=["list", "start", "end"], default="list")
    freezes.add_argument("name", nargs="?")
    freezes.add_argument("--until", help="start: when it ends (ISO 8601 with offset)")
    freezes.add_argument("--reason", help="start: why (required)")
    freezes.add_argument("--env", action="append", help="start: an env it covers (repeat)")
    freezes.add_argument("--json", action="store_true", help="print pploy's JSON answer")
    freezes.set_defaults(client_func=cmd_freezes)


def run(args: argparse.Namespace) -> int:
    # Ctrl-C must reach us even when started with SIGINT ignored (a background job of a
    # script: `sh -c 'pploy client deploy … &'`), or --cancel-on-interrupt cancels nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.client_func(_api(), args))
    except UsageError as exc:
        print(f"pploy client: {exc}", file=sys.stderr)
        return USAGE
    except ApiError as exc:
        _say(f"refused: {exc}")
        return REFUSED
    except ConnectionError as exc:
        _say(str(exc))
        return LOST
    except OSError as exc:
        _say(f"cannot reach pploy at {os.environ.get('PPLOY_URL') or DEFAULT_URL}: {exc}")
        return LOST
    except KeyboardInterrupt:
        return INTERRUPTED


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cancel-on-interrupt", action="store_true",
        help="Ctrl-C cancels the job (and follows it to its end) instead of only stopping",
    )  # fmt: skip
    parser.add_argument("--no-follow", action="store_true", help="print the job id and exit")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "client",
        help="pploy's API from a terminal or CI (PPLOY_URL, PPLOY_TOKEN)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="client_command", metavar="COMMAND", required=True)

    status = commands.add_parser("status", help="projects and locks (or one project)")
    status.add_argument("project", nargs="?")
    status.add_argument("--json", action="store_true", help="print pploy's JSON answer")
    status.set_defaults(client_func=cmd_status)

    add = commands.add_parser("add", help="add a project from a git URL")
    add.add_argument("url")
    add.set_defaults(client_func=cmd_add)

    remove = commands.add_parser("remove", help="remove a project (its history is kept)")
    remove.add_argument("project")
    remove.set_defaults(client_func=cmd_remove)

    lock = commands.add_parser("lock", help="gain, extend or release a project's lock")
    lock.add_argument("project")
    lock.add_argument("operation", choices=["gain", "extend", "release"])
    lock.set_defaults(client_func=cmd_lock)

    checkout = commands.add_parser("checkout", help="check out a ref and follow the job")
    checkout.add_argument("project")
    checkout.add_argument("ref")
    _follow_options(checkout)
    checkout.set_defaults(client_func=cmd_checkout)

    deploy = commands.add_parser("deploy", help="deploy to an environment and follow the job")
    deploy.add_argument("project")
    deploy.add_argument("env")
    deploy.add_argument(
        "--override-freeze", metavar="REASON", help="admins: deploy through a freeze"
    )
    _follow_options(deploy)
    deploy.set_defaults(client_func=cmd_deploy)

    log = commands.add_parser("log", help="follow a job's log (from a byte offset)")
    log.add_argument("job", type=int)
    log.add_argument("--offset", type=int, default=0, help="byte to start from (default 0)")
    log.add_argument("--cancel-on-interrupt", action="store_true", help="Ctrl-C cancels the job")
    log.set_defaults(client_func=cmd_log)

    cancel = commands.add_parser("cancel", help="cancel a running job (lock holder only)")
    cancel.add_argument("job", type=int)
    cancel.set_defaults(client_func=cmd_cancel)
    _governance_commands(commands)

    parser.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """``python -m pploy.client.cli``: the same as ``pploy client``."""
    top = argparse.ArgumentParser(prog="pploy")
    register(top.add_subparsers(dest="command"))
    args = top.parse_args(["client", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
