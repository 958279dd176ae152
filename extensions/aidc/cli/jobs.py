"""``aidc jobs ...``: notebook jobs from the terminal, through the same client as ``aidc.jobs``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import jobs as api
from ..client import Client
from ..display import text_table
from ..errors import UsageError
from .parsing import CommandGroup


def add_parser(sub, common) -> None:
    jobs = CommandGroup(sub, "jobs", "run notebooks as batch jobs and follow them", common)
    action = jobs.action

    s = action("submit", "submit a notebook (path relative to your home)", submit)
    s.add_argument("path")
    _job_options(s)
    s.add_argument("-f", "--follow", action="store_true",
                   help="follow the job's output with a progress bar until it ends")
    s.add_argument("--json", action="store_true")

    ls = action("list", "list your jobs (admins: everyone's)", list_)
    ls.add_argument("--status", choices=["queued", "running", "completed", "failed", "cancelled"])
    ls.add_argument("--json", action="store_true")

    sh = action("show", "a job's status, parameters, progress and metrics", show)
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true")

    lg = action("logs", "what a job printed; -f follows it live", logs)
    lg.add_argument("id")
    lg.add_argument("-f", "--follow", action="store_true")

    c = action("cancel", "stop a job (GPUs released, partial output kept)", cancel)
    c.add_argument("id")

    o = action("output", "download a job's output notebook", output)
    o.add_argument("id")
    o.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")

    sw = action("sweep", "one job per combination of a parameter grid", sweep)
    sw.add_argument("path")
    sw.add_argument("-g", "--grid", nargs=2, action="append", metavar=("NAME", "VALUES"), default=[],
                    help="a grid axis: NAME and comma-separated VALUES (e.g. -g lr 0.01,0.001)")
    sw.add_argument("--metric", help="recorded metric that picks the best run")
    sw.add_argument("--mode", choices=["max", "min"], default="max")
    _job_options(sw)
    sw.add_argument("--wait", action="store_true", help="wait for every run, then print the table")

    ss = action("sweep-show", "a sweep's runs side by side and the best one", sweep_show)
    ss.add_argument("id")
    ss.add_argument("--json", action="store_true")

    schedule = jobs.group("schedule", "run a notebook on a cron schedule").action
    cr = schedule("create", "create a schedule", schedule_create)
    cr.add_argument("path")
    cr.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * *"')
    cr.add_argument("--timezone", default="UTC", help="IANA time zone (default UTC)")
    _job_options(cr)
    sl = schedule("list", "your schedules", schedule_list)
    sl.add_argument("--json", action="store_true")
    for name, helptext in (("pause", "stop creating jobs"), ("resume", "create jobs again"),
                           ("delete", "remove the schedule (its jobs stay)")):
        p = schedule(name, helptext, schedule_action)
        p.add_argument("id")
        p.set_defaults(action=name)


def _job_options(p) -> None:
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="a parameter (papermill style; VALUE is read as JSON when it can be: 3, 0.1, true)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs for the job (default 0)")
    p.add_argument("--timeout", type=float, help="seconds the whole job may run")
    p.add_argument("--cell-timeout", type=float, help="seconds any one cell may run")
    p.add_argument("--priority", type=int, help="higher runs first (default 0)")
    p.add_argument("--retries", type=int, help="re-run a failed attempt this many times")
    p.add_argument("--secret", action="append", default=[], metavar="NAME",
                   help="one of your secrets (`aidc secrets set NAME`), given to the job as the "
                   "environment variable NAME; repeat for more")


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parameters(args) -> dict:
    return {name: _value(value) for name, value in args.parameter}


def _options(args) -> dict:
    return {"gpus": args.gpus, "timeout": args.timeout, "priority": args.priority,
            "cell_timeout": args.cell_timeout, "retries": args.retries,
            "secrets": args.secret or None}


def submit(args) -> int:
    job = api.submit(args.path, parameters=_parameters(args), **_options(args))
    if args.json and not args.follow:
        print(json.dumps(job.data, indent=2))
        return 0
    print(f"job {job.id} {job.status}: {job.path}", file=sys.stderr if args.follow else sys.stdout)
    if args.follow:
        return _follow(job)
    return 0


def list_(args) -> int:
    found = api.list_jobs(status=args.status)
    if args.json:
        print(json.dumps([j.data for j in found], indent=2))
        return 0
    if not found:
        print("no jobs")
        return 0
    rows = [[d["id"], d["status"], d["owner"], d["gpus"], (d["created"] or "")[:19], d["path"]]
            for d in (j.data for j in found)]
    print(text_table(["ID", "STATUS", "OWNER", "GPUS", "CREATED", "PATH"], rows))
    return 0


def show(args) -> int:
    d = api.get(args.id).data
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"job {d['id']}: {d['status']}" + (f" ({d['error']})" if d.get("error") else ""))
    print(f"  notebook   {d['path']}  parameters {json.dumps(d['parameters'])}")
    progress = d["progress"]
    if progress.get("cells"):
        cell = "-" if progress.get("cell") is None else progress["cell"] + 1
        print(f"  progress   cell {cell} of {progress['cells']}  attempt {d['attempt']} of {d['retries'] + 1}")
    if d.get("waiting"):
        print(f"  waiting    {d['waiting']}")
    for note in d.get("notices") or []:
        print(f"  note       {note}")
    print(f"  gpus       {d['gpus']}" + (f" ({d['visible_devices']})" if d.get("visible_devices") else ""))
    for key in ("created", "started", "finished"):
        if d.get(key):
            print(f"  {key:<10} {d[key]}")
    for name, value in sorted(d["metrics"].items()):
        print(f"  metric     {name} = {value}")
    for ds in d.get("datasets") or []:  # the dataset versions its notebook read (aidc.data)
        print(f"  dataset    {ds['name']} v{ds['version']}  sha256 {ds['sha256'][:12]}")
    return 0


def logs(args) -> int:
    job = api.get(args.id)
    if args.follow:
        return _follow(job)
    sys.stdout.write(job.logs())
    return 0


def _follow(job: api.Job) -> int:
    """Stream a job's output, with a cell progress bar on stderr; exit 1 unless it completed."""
    from tqdm import tqdm

    bar = None
    status = job.status
    if status == "queued" and job.data.get("waiting"):
        print(f"[aidc] queued: {job.data['waiting']}", file=sys.stderr)
    try:
        for e in job.events(follow=True):
            kind = e["type"]
            if kind == "cell_start":
                cells = (e.get("value") or {}).get("cells") or 0
                if bar is None and cells:
                    bar = tqdm(total=cells, unit="cell", file=sys.stderr, dynamic_ncols=True)
                if bar is not None:
                    bar.set_description(f"cell {e['cell'] + 1}")
            elif kind == "cell_end" and bar is not None:
                bar.update(1)
            elif kind in ("stream", "error"):
                text = e.get("text") or ""
                if bar is not None:
                    bar.clear()
                (sys.stderr if e.get("name") == "stderr" or kind == "error" else sys.stdout).write(text)
                if bar is not None:
                    bar.refresh()
            elif kind == "metric":
                value = e.get("value") or {}
                (tqdm.write if bar else print)(f"[metric] {e['name']} = {value.get('value')}")
            elif kind == "status":
                status = e.get("status") or status
            elif kind == "notice":  # e.g. which kernel runs a notebook that names none
                (tqdm.write if bar else print)(f"[aidc] {e.get('text')}", file=sys.stderr)
    finally:
        if bar is not None:
            bar.close()
    job.refresh()
    print(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""), file=sys.stderr)
    return 0 if job.status == "completed" else 1


def cancel(args) -> int:
    job = api.get(args.id).cancel()
    print(f"job {job.id}: {'cancelling' if job.status == 'running' else job.status}")
    return 0


def output(args) -> int:
    import nbformat

    nb = api.get(args.id).output()
    text = nbformat.writes(nb)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def sweep(args) -> int:
    if not args.grid:
        raise UsageError("give at least one grid axis: -g NAME VALUES (e.g. -g lr 0.01,0.001)")
    grid = {name: [_value(v) for v in values.split(",")] for name, values in args.grid}
    s = api.sweep(args.path, grid=grid, metric=args.metric, mode=args.mode,
                  parameters=_parameters(args), **_options(args))
    print(f"sweep {s.id}: {len(s.runs)} jobs")
    if args.wait:
        s.wait()
        _print_sweep(s)
    return 0


def sweep_show(args) -> int:
    s = api.Sweep(Client().get_json(f"{api.client.API}/sweeps/{args.id}"), Client())
    if args.json:
        print(json.dumps(s._data, indent=2))
        return 0
    _print_sweep(s)
    return 0


def _print_sweep(s: api.Sweep) -> None:
    """The runs side by side (aligned, numbers rounded), the best one marked; a metric no
    run recorded is an error after the table (which shows what they did record)."""
    columns = s.columns()
    rows = []
    for r in s.runs:
        values = {**r["parameters"], **r["metrics"]}
        rows.append([r["job"], r["status"], *(values.get(k) for k in columns[2:])])
    best = (s.data.get("best") or {}).get("job")
    marks = ["<- best" if r["job"] == best else "" for r in s.runs]
    print(text_table([c.upper() for c in columns], rows, marks))
    problem = s.no_best_reason()
    if problem:
        raise UsageError(problem)


def schedule_create(args) -> int:
    opts = _options(args)
    opts.pop("cell_timeout")
    opts.pop("retries")
    s = api.schedule(args.path, args.cron, timezone=args.timezone, parameters=_parameters(args), **opts)
    print(f"schedule {s.id}: {args.cron} ({args.timezone}), next run {s.data['next_run']}")
    return 0


def schedule_list(args) -> int:
    items = Client().get_json(f"{api.client.API}/schedules")["schedules"]
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no schedules")
        return 0
    rows = [[s["id"], s["cron"], s["timezone"], "paused" if s["paused"] else f"next {s['next_run']}",
             s["path"]] for s in items]
    print(text_table(["ID", "CRON", "TIMEZONE", "STATE", "PATH"], rows))
    return 0


def schedule_action(args) -> int:
    c = Client()
    s = api.Schedule(c.get_json(f"{api.client.API}/schedules/{args.id}"), c)
    if args.action == "delete":
        s.delete()
        print(f"schedule {args.id} deleted")
    else:
        getattr(s, args.action)()
        print(f"schedule {args.id} {'paused' if s.paused else 'resumed'}")
    return 0
