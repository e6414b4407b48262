"""Writes bench/report.md and its plots from bench/results.json.

`python -m bench` calls it after the benchmarks; `python -m bench.report`
rewrites the report from the results already there. Every figure in the
report is read from results.json (which keeps the environment, versions,
parameters and raw samples), and each target is checked against its figure,
so the report says "met" or "missed" without anyone choosing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
PLOTS = HERE / "plots"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


class Report:
    def __init__(self, data: dict[str, Any]) -> None:
        self.env = data["environment"]
        self.results = {r["name"]: r for r in data["results"]}
        self.targets: list[tuple[str, str, str, bool | None]] = []
        self.sections: list[str] = []
        self.memory: dict[str, dict[str, float]] = {}

    def get(self, name: str) -> dict[str, Any] | None:
        return self.results.get(name)

    def target(self, what: str, goal: str, measured: str, ok: bool | None) -> None:
        self.targets.append((what, goal, measured, ok))

    def plot(self, name: str, draw: Callable[[Any], None], size: tuple[float, float]) -> str:
        PLOTS.mkdir(exist_ok=True)
        figure, axes = plt.subplots(figsize=size, dpi=110)
        draw(axes)
        figure.tight_layout()
        path = PLOTS / f"{name}.png"
        figure.savefig(path)
        plt.close(figure)
        return f"![{name}](plots/{name}.png)"

    # Sections -------------------------------------------------------------------------

    def sync(self) -> None:
        r = self.get("sync_initial_and_event_lag")
        if r is None:
            return
        p = r["params"]
        calls = r["api_calls"]
        minimum = r["api_calls_minimum"]
        at_minimum = all(calls.get(k, 0) <= v for k, v in minimum.items())
        self.target(
            f"initial sync, {p['customers']:,} customers / {p['invoices']:,} invoices,"
            f" {p['intacct_latency_ms']} ms latency, {p['intacct_concurrency_limit']} at a time",
            "within 1.25x of the latency/concurrency time bound",
            f"{r['initial_sync_seconds']} s = {r['initial_sync_over_bound']}x the bound "
            f"({r['initial_sync_time_bound_seconds']} s)"
            + (
                f"; median of {len(r['initial_sync_seconds_each'])} runs: "
                + ", ".join(f"{v:.1f}" for v in r["initial_sync_seconds_each"])
                + " s"
                if r.get("initial_sync_seconds_each")
                else ""
            ),
            r["initial_sync_over_bound"] <= 1.25,
        )
        self.target(
            "initial sync API calls",
            "at the minimum the API allows",
            ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
            + " (minimum "
            + ", ".join(f"{k} {v}" for k, v in sorted(minimum.items()))
            + ")",
            at_minimum,
        )
        lags = r.get("samples", {}).get("change_to_ar_store_ms", [])
        self.target(
            "Intacct change to AR store",
            "p50 and p99 reported",
            f"p50 {r['lag_ms_p50']} ms, p99 {r['lag_ms_p99']} ms ({r['changes_applied']} changes)",
            None,
        )
        self.memory["sync at scale"] = r.get("peak_rss_mib", {})
        pages = r.get("pages_by_object", {})

        def draw(ax: Any) -> None:
            labels = ["time bound", "sync job", "connect to done"]
            values = [
                r["initial_sync_time_bound_seconds"],
                r.get("initial_sync_job_seconds", 0),
                r["initial_sync_seconds"],
            ]
            ax.barh(labels, values, color=["#999", "#4a7", "#27a"])
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.1f} s", va="center")
            ax.set_xlabel("seconds")
            ax.set_title("Initial sync: wall time beside the latency/concurrency bound")

        chart = self.plot("sync", draw, (7, 2.4))
        cpu = r.get("initial_sync_cpu_seconds", {})
        floor = r.get("initial_sync_cpu_floor_seconds", 0.0)
        cpu_text = (
            "CPU time used meanwhile (the machine's two cores were "
            f"{r.get('initial_sync_machine_busy', 0) * 100:.0f}% busy over the wall time; "
            "postgres is every PostgreSQL process, the shared server's):\n\n"
            + _table(["process", "CPU seconds"], [[k, v] for k, v in sorted(cpu.items())])
            + (
                f"\n\nTogether {sum(cpu.values()):.1f} CPU seconds: on this machine's cores the "
                f"work alone needs at least {r['initial_sync_cpu_floor_seconds']} s "
                f"({floor / r['initial_sync_time_bound_seconds']:.2f}x the latency/concurrency"
                " bound), whatever Intacct's latency."
                if "initial_sync_cpu_floor_seconds" in r
                else ""
            )
            if cpu
            else ""
        )
        timeline_text = self._sync_timeline(r.get("samples", {}).get("initial_sync_timeline"))
        lag_chart = self._cdf("ar_store_lag", {"change to AR store": lags}, "ms")
        self.sections.append(
            "## Initial sync and event lag\n\n"
            f"{p['customers']:,} customers and {p['invoices']:,} invoices over 18 months in the "
            f"sandbox company; the initial sync reads six months ({r['records_synced']:,} "
            f"records). The sandbox answers each call {p['intacct_latency_ms']} ms after it "
            "arrived (its own work included, as a remote Intacct's would be) and "
            f"refuses a third concurrent call (it saw at most {r.get('intacct_max_concurrency')} "
            f"at once, throttled {r.get('intacct_throttled')}). The wall time runs from the "
            "ConnectAccount call to the sync's end. The bound is max(longest object's pages, "
            "ceil(all pages / 2)) x latency, plus the connect's two requests (the session, "
            "then the permission and multi-entity checks): one object's pages follow one "
            "another (each asks for the keys after the last).\n\n"
            + _table(
                ["object", "pages of 2,000"],
                [[k.removeprefix("OBJECT_TYPE_").lower(), v] for k, v in pages.items()],
            )
            + f"\n\n{chart}\n\n"
            + cpu_text
            + timeline_text
            + f"\n\nThen {r['changes_applied']:,} changes made in the sandbox's UI, "
            "each firing a smart event through the gateway: time from the change to the "
            f"record in the AR store, p50 {r['lag_ms_p50']} ms, p99 {r['lag_ms_p99']} ms.\n\n"
            f"{lag_chart}\n"
        )

    def _sync_timeline(self, timeline: dict[str, Any] | None) -> str:
        """Where the median initial sync's wall time went: the cores each process used,
        step by step, and the records written; the reading ends where the connector's
        and the sandbox's use does."""
        if not timeline or not timeline.get("t"):
            return ""
        t, cores, written = timeline["t"], timeline["cores"], timeline["records_written"]
        idle = [0.0] * len(t)
        connector, sandbox = cores.get("connector", idle), cores.get("intacct sandbox", idle)
        busy_steps = [i for i in range(len(t)) if connector[i] + sandbox[i] >= 0.1]
        read_until = t[busy_steps[-1]] if busy_steps else 0.0
        after = [i for i in range(len(t)) if t[i] > read_until]
        sync = cores.get("sync", idle)
        sync_after = sum(sync[i] for i in after) / len(after) if after else 0.0
        machine_before = [
            sum(c[i] for c in cores.values()) for i in range(len(t)) if t[i] <= read_until
        ]

        def draw(ax: Any) -> None:
            for name in ("sync", "connector", "intacct sandbox", "postgres", "nats-server"):
                if name in cores:
                    ax.plot(t, cores[name], label=name, linewidth=1.2)
            ax.axvline(read_until, color="#999", linestyle="--", linewidth=1)
            ax.set_xlabel("seconds since ConnectAccount")
            ax.set_ylabel("cores used")
            ax.set_ylim(0, 1.2)
            twin = ax.twinx()
            twin.plot(t, written, color="#000", linestyle=":", label="records written")
            twin.set_ylabel("records written")
            ax.legend(loc="upper left", fontsize=7, ncol=3)
            ax.set_title("Initial sync (median run): CPU by process and records written")

        chart = self.plot("sync_timeline", draw, (7, 3.2))
        return (
            f"\n\nWhere the time goes (the median run, sampled every "
            f"{t[1] - t[0] if len(t) > 1 else t[0]:.2f} s): the connector and the sandbox "
            f"stop at about {read_until:.1f} s, when the last page is read; until then the "
            f"processes together used {sum(machine_before) / max(len(machine_before), 1):.2f} "
            "of the two cores on average. The sync then writes what it has queued for "
            f"{max(t[-1] - read_until, 0):.1f} s more, using {sync_after:.2f} of a core.\n\n"
            f"{chart}"
        )

    def decode(self) -> None:
        r = self.get("decode_arinvoice_page")
        if r is None:
            return
        self.target(
            "decode throughput",
            "3x xmltodict",
            f"{r['vs_xmltodict']}x ({r['arbridge_streaming_records_per_second']:,} rec/s"
            f" streaming, {r['xmltodict_records_per_second']:,} xmltodict)",
            r["vs_xmltodict"] >= 3,
        )
        self.target(
            "decode beside a bare lxml parse",
            "within 2x",
            f"bare parse {r['bare_parse_over_arbridge']}x faster than streaming,"
            f" {r['bare_parse_over_arbridge_whole_document']}x than whole-document",
            r["bare_parse_over_arbridge"] <= 2,
        )
        samples = r.get("samples", {})

        def draw(ax: Any) -> None:
            names = list(samples)
            medians = [statistics.median(samples[n]) for n in names]
            ax.bar(range(len(names)), medians, color="#27a")
            for x, n in enumerate(names):
                ax.scatter([x] * len(samples[n]), samples[n], color="#000", s=6, zorder=3)
            ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=15)
            ax.set_ylabel("records per second")
            ax.set_title("Decoding one ARINVOICE page (bars: median; dots: rounds)")

        chart = self.plot("decode", draw, (7, 3.2)) if samples else ""
        self.sections.append(
            "## Decoding Intacct responses\n\n"
            f"A {r['params']['records']:,}-record ARINVOICE page ({r['params']['bytes']:,} "
            "bytes), decoded in interleaved rounds by each decoder; medians.\n\n"
            + _table(
                ["decoder", "records/s"],
                [
                    ["arbridge, streaming", f"{r['arbridge_streaming_records_per_second']:,}"],
                    [
                        "arbridge, whole document",
                        f"{r['arbridge_whole_document_records_per_second']:,}",
                    ],
                    ["xmltodict", f"{r['xmltodict_records_per_second']:,}"],
                    [
                        "bare lxml parse (no records)",
                        f"{r['bare_lxml_parse_records_per_second']:,}",
                    ],
                ],
            )
            + f"\n\n{chart}\n"
        )

    def ingest(self) -> None:
        r = self.get("event_ingest")
        if r is None:
            return
        rates = r.get("open_loop", [])
        best = max(
            (x for x in rates if x["ok"]), key=lambda x: x["offered_per_second"], default=None
        )
        self.target(
            "webhook ingest with durable publish",
            "sustained events/s, p50 and p99 at a fixed offered rate",
            (
                f"{best['achieved_per_second']:,}/s sustained at {best['offered_per_second']:,}/s "
                f"offered: p50 {best['p50_ms']} ms, p99 {best['p99_ms']} ms"
                if best
                else "no offered rate was sustained"
            ),
            None,
        )
        self.memory["webhook ingest"] = r.get("peak_rss_mib", {})

        def draw(ax: Any) -> None:
            offered = [x["offered_per_second"] for x in rates]
            ax.plot(offered, [x["p50_ms"] for x in rates], "o-", label="p50")
            ax.plot(offered, [x["p99_ms"] for x in rates], "s-", label="p99")
            ax.set_yscale("log")
            ax.set_xlabel("offered events per second (open loop)")
            ax.set_ylabel("ms from scheduled send to 202")
            ax.set_title("Webhook ingest through the gateway")
            ax.legend()

        chart = self.plot("ingest", draw, (7, 3.2)) if rates else ""
        self.sections.append(
            "## Webhook ingest\n\n"
            "An open-loop generator sends signed smart events to the gateway at a fixed rate, "
            "each at its scheduled time whether or not earlier ones were answered; latency is "
            "measured from the scheduled time (so a stall counts against every request it "
            "delays). Each event is answered 202 only after JetStream stored it.\n\n"
            + _table(
                ["offered/s", "achieved/s", "accepted", "errors", "p50 ms", "p99 ms", "kept up"],
                [
                    [
                        f"{x['offered_per_second']:,}",
                        f"{x['achieved_per_second']:,}",
                        f"{x['accepted']:,}",
                        x["errors"],
                        x["p50_ms"],
                        x["p99_ms"],
                        "yes" if x["ok"] else "no",
                    ]
                    for x in rates
                ],
            )
            + f"\n\nClosed loop (64 requests in flight): {r['http_gateway_events_per_second']:,} "
            f"events/s through HTTP; the gRPC stream: {r['grpc_stream_events_per_second']:,}/s."
            f"\n\n{chart}\n"
        )

    def charges(self) -> None:
        r = self.get("charges")
        if r is None:
            return
        exact = r["gateway_transactions_per_invoice_max"] == 1
        self.target(
            "charges with idempotency",
            "charges/s; exactly one gateway charge per invoice",
            f"{r['charges_per_second']}/s ({r['requests_per_second']} requests/s); "
            f"max {r['gateway_transactions_per_invoice_max']} gateway charge per invoice",
            exact,
        )
        self.memory["charges"] = r.get("peak_rss_mib", {})
        samples = r.get("samples", {}).get("charge_latency_ms", [])

        def draw(ax: Any) -> None:
            ax.hist(samples, bins=40, color="#27a")
            ax.set_xlabel("ms per charge request under load")
            ax.set_ylabel("requests")
            ax.set_title(f"{r['invoices']:,} invoices x {r['requests_per_key']} same-key requests")

        chart = self.plot("charges", draw, (7, 3)) if samples else ""
        self.sections.append(
            "## Charges\n\n"
            f"{r['invoices']:,} invoices, each charged by {r['requests_per_key']} concurrent "
            f"requests under one idempotency key, {r['in_flight_invoices']} invoices in flight, "
            "through payments and the card gateway sandbox.\n\n"
            + _table(
                ["figure", "value"],
                [
                    ["charges per second", r["charges_per_second"]],
                    ["requests per second", r["requests_per_second"]],
                    [
                        "p50 / p99 under load",
                        f"{r['charge_latency_p50_ms']} / {r['charge_latency_p99_ms']} ms",
                    ],
                    [
                        "one at a time p50 / p99",
                        f"{r['one_at_a_time_p50_ms']} / {r['one_at_a_time_p99_ms']} ms",
                    ],
                    ["gateway charges", r["gateway_transactions"]],
                    ["max gateway charges per invoice", r["gateway_transactions_per_invoice_max"]],
                    ["answers", ", ".join(f"{k} {v}" for k, v in r["answers"].items())],
                ],
            )
            + f"\n\n{chart}\n"
        )

    def rules(self) -> None:
        r = self.get("rules")
        if r is None:
            return
        self.target(
            "rule evaluations",
            "per second",
            f"{r['engine_evaluations_per_s']:,}/s ({r['engine_invoices']:,} invoices x "
            f"{r['engine_rules']} rules)",
            None,
        )
        self.target(
            "Intacct change to applied payment (on-creation rule)",
            "p50 and p99 reported",
            f"p50 {r['e2e_change_to_applied_p50_ms']} ms,"
            f" p99 {r['e2e_change_to_applied_p99_ms']} ms",
            None,
        )
        self.memory["rules end to end"] = r.get("peak_rss_mib", {})
        lags = r.get("samples", {}).get("change_to_applied_ms", [])
        chart = self._cdf("applied_lag", {"invoice created to payment applied": lags}, "ms")
        self.sections.append(
            "## Rules\n\n"
            + _table(
                ["figure", "value"],
                [
                    ["evaluations per second", f"{r['engine_evaluations_per_s']:,}"],
                    ["rule checks per second", f"{r['engine_rule_checks_per_s']:,}"],
                    [
                        f"claim of due charges, schedule of {r['schedule_rows']:,}",
                        f"p50 {r['schedule_claim_p50_ms']} ms, max {r['schedule_claim_max_ms']} ms"
                        f" (index used: {r['schedule_claim_uses_index']})",
                    ],
                    [
                        "invoice created in Intacct to payment applied there",
                        f"p50 {r['e2e_change_to_applied_p50_ms']} ms, p99 "
                        f"{r['e2e_change_to_applied_p99_ms']} ms ({r['e2e_applied']} invoices)",
                    ],
                ],
            )
            + f"\n\n{chart}\n"
        )

    def others(self) -> None:
        rows = []
        for name in ("sandbox_query", "stream_memory", "outbox_relay_consumer"):
            r = self.get(name) or next(
                (v for k, v in self.results.items() if k.startswith(name)), None
            )
            if r is None:
                continue
            figures = ", ".join(
                f"{k} {v}" for k, v in r.items() if k not in ("name", "params", "samples")
            )
            rows.append([r["name"], figures])
        if rows:
            self.sections.append(
                "## Other figures\n\n" + _table(["benchmark", "figures"], rows) + "\n"
            )

    def memory_section(self) -> None:
        runs = {k: v for k, v in self.memory.items() if v}
        if not runs:
            return
        services = sorted({s for v in runs.values() for s in v})

        def draw(ax: Any) -> None:
            width = 0.8 / len(runs)
            for i, (run, values) in enumerate(runs.items()):
                ax.bar(
                    [x + i * width for x in range(len(services))],
                    [values.get(s, 0) for s in services],
                    width,
                    label=run,
                )
            ax.set_xticks([x + 0.4 - width / 2 for x in range(len(services))], services)
            ax.set_ylabel("peak RSS, MiB")
            ax.set_title("Peak memory of each service in each run")
            ax.legend(fontsize=8)

        chart = self.plot("memory", draw, (7, 3.2))
        rows = [[run, *[values.get(s, "") for s in services]] for run, values in runs.items()]
        self.sections.append(
            "## Peak memory\n\nEach service's peak resident memory (the kernel's VmHWM) at the "
            "end of each run, MiB.\n\n" + _table(["run", *services], rows) + f"\n\n{chart}\n"
        )

    def chaos(self) -> None:
        path = HERE / "chaos.json"
        if not path.exists():
            return
        data = json.loads(path.read_text())
        rows = [
            [
                o["scenario"],
                o["seed"],
                o["attempted"],
                o["acknowledged"],
                o["lost"],
                o["duplicated"],
                o["wrong"],
                o["cross_account"],
                o["faults"],
                f"{o['recovery_seconds']} s",
                "pass" if o["passed"] else "**FAIL**",
            ]
            for o in data["scenarios"]
        ]
        notes = [f"- {o['scenario']}: {note}" for o in data["scenarios"] for note in o["notes"]]
        self.sections.append(
            "## Fault injection (`make chaos`)\n\n"
            f"Run {data['when']}. Each scenario drives the services as processes through "
            "their APIs and the sandboxes, breaks something (seeded), lets the suite recover, "
            "and counts from the systems of record; it passes only with 0 lost, 0 duplicated, "
            "0 wrong and 0 cross-account. Recovery: from the end of the fault until every check "
            "held.\n\n"
            + _table(
                [
                    "scenario",
                    "seed",
                    "attempted",
                    "acknowledged",
                    "lost",
                    "duplicated",
                    "wrong",
                    "cross-account",
                    "faults",
                    "recovery",
                    "result",
                ],
                rows,
            )
            + "\n\n"
            + "\n".join(notes)
            + "\n"
        )

    def _cdf(self, name: str, series: dict[str, list[float]], unit: str) -> str:
        series = {k: v for k, v in series.items() if v}
        if not series:
            return ""

        def draw(ax: Any) -> None:
            for label, values in series.items():
                ordered = sorted(values)
                n = len(ordered)
                ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)
                for q in (0.5, 0.99):
                    ax.axvline(_percentile(ordered, q), color="#999", linewidth=0.6)
            ax.set_xlabel(unit)
            ax.set_ylabel("fraction at or below")
            ax.legend()
            ax.grid(alpha=0.3)

        return self.plot(name, draw, (7, 3))

    def _reference(self) -> str:
        reference = self.env.get("reference_work_seconds") or {}
        if not reference:
            return "with the machine's speed in mind."
        taken = " and ".join(f"{v} s {k}" for k, v in reference.items())
        return (
            "scale them by the machine's speed: a fixed piece of plain-Python work "
            "(`bench.__main__.reference_work`: 60,000 records as dicts, sorted JSON, "
            f"SHA-256) took {taken} the benchmarks on this run."
        )

    def render(self) -> str:
        self.sync()
        self.decode()
        self.ingest()
        self.charges()
        self.rules()
        self.memory_section()
        self.chaos()
        self.others()
        env = self.env
        versions = ", ".join(f"{k} {v}" for k, v in sorted(env.get("versions", {}).items()))
        head = (
            "# arbridge benchmark report\n\n"
            f"Measured {env.get('when')} on {env.get('platform')}, {env.get('cpus')} CPUs, "
            f"Python {env.get('python')}"
            + (f", commit {env['commit']}" if env.get("commit") else "")
            + f". {versions}.\n\n"
            "Reproduce: `make bench` (every benchmark; `python -m bench NAME` runs one and keeps "
            "the others' results), which writes `bench/results.json` (environment, parameters "
            "and raw samples) and this report. Each benchmark starts once the machine is "
            "quiet (under 15% busy, 30 s at most). Benchmarks measure; tests check "
            "behaviour. The machine is a shared VM whose speed varies from day to day: "
            "compare figures measured on the same day, or " + self._reference() + "\n\n"
            "## Targets\n\n"
            + _table(
                ["what", "target", "measured", "verdict"],
                [[w, g, m, _verdict(ok)] for w, g, m, ok in self.targets],
            )
            + "\n"
        )
        return head + "\n" + "\n".join(self.sections)


def write(results: Path = HERE / "results.json", out: Path = HERE / "report.md") -> Path:
    report = Report(json.loads(results.read_text()))
    out.write_text(report.render())
    return out


if __name__ == "__main__":
    print(write())
