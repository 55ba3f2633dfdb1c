"""The ``fraudstream`` command. Every setting also reads its environment variable (``settings``)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from pathlib import Path

import click

from fraudstream.settings import Settings, describe, reveal

PATH = click.Path(path_type=Path)
FILE = click.Path(dir_okay=False, path_type=Path)
EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
RUNTIMES = click.Choice(["faust", "confluent"])
DB_OPTION = click.option(
    "--db", type=PATH, help="SQLite file (default: from DATABASE_URL, else finance.db)."
)


def _settings(db: Path | None = None, **overrides) -> Settings:
    """The settings from the environment, on the SQLite file ``db`` if given."""
    try:
        return Settings.from_env(database_url=f"sqlite:///{db}" if db else None, **overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@contextlib.contextmanager
def _reported(*errors: type[Exception]):
    """End the command with the message of any of ``errors`` (exit code 1)."""
    try:
        yield
    except errors as exc:
        raise click.ClickException(str(exc)) from exc


def _need_cluster(settings: Settings) -> str:
    if not settings.bootstrap_servers:
        raise click.UsageError(
            "KAFKA_BOOTSTRAP_SERVERS is not set. Start a broker with `fraudstream broker` and "
            "export the address it prints, or use `fraudstream run`."
        )
    return settings.bootstrap_servers


@click.group(context_settings={"show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Streaming fraud monitoring: replay, score, store and alert on bank transactions."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("faust", "mode", "aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option(
    "--csv", "csv_path", type=PATH, default="data/transactions.csv", help="Transactions to replay."
)
@DB_OPTION
@click.option("--fresh", is_flag=True, help="Delete the database first instead of resuming it.")
@click.option("--rate", type=float, help="Events per second (default: as fast as possible).")
@click.option("--speedup", type=float, help="Replay at N times the pace of the timestamps.")
@click.option("--limit", type=int, help="Produce at most N events.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=900,
    help="Seconds to wait for the processor to catch up.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-dbt", is_flag=True, help="Skip the dbt build at the end.")
@click.option(
    "--runtime",
    type=RUNTIMES,
    help="Stream processor runtime (default: PROCESSOR_RUNTIME, else confluent).",
)
@click.option(
    "--labels",
    is_flag=True,
    help="Feed the CSV's is_fraud back as delayed labels (LABEL_DELAY_DAYS) to the processor.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    help="Stream processors in the consumer group (more than one needs PostgreSQL).",
)
@click.option(
    "--rules",
    "rules_file",
    type=EXISTING_FILE,
    help="Apply this rule file (publish it on the rules topic) before the replay (default: the "
    "live rules; on an empty topic, RULES_FILE, else the shipped rules).",
)
def run(csv_path, db, runtime, no_progress, no_dbt, rules_file, **options) -> None:
    """Run the whole pipeline once on a CSV and print a summary.

    Starts the embedded broker unless KAFKA_BOOTSTRAP_SERVERS is set.
    """
    from fraudstream.run import RunError, format_summary, run_pipeline
    from stream_processor.rules import RuleError, rules_from

    settings = _settings(db, runtime=runtime)
    with _reported(RuleError):  # refused here, not in the processor's log
        rules_from(settings.rules_file)
    rules = _rules(rules_file) if rules_file else None
    with _reported(RunError, RuleError):
        summary = run_pipeline(
            csv_path, settings, progress=not no_progress, dbt=not no_dbt, rules=rules, **options
        )  # fresh, rate, speedup, limit, timeout_s, labels, workers
    click.echo(format_summary(summary))
    if summary.dbt is not None and not summary.dbt.ok:
        sys.exit(1)


@main.command()
@click.option(
    "--runtime",
    type=RUNTIMES,
    help="faust agent or confluent-kafka batch consumer (default: PROCESSOR_RUNTIME).",
)
@click.option("--loglevel", default="info")
def process(runtime: str | None, loglevel: str) -> None:
    """Run the stream processor until SIGTERM / Ctrl-C."""
    settings = _settings(runtime=runtime)
    from fraudstream.broker import ensure_topics

    ensure_topics(_need_cluster(settings), settings)  # the labels topic may not exist yet
    if settings.runtime == "confluent":
        from stream_processor.kafka_runtime import run_consumer

        sys.exit(run_consumer(settings))
    from stream_processor.faust_app import FatalError, run_worker

    with _reported(FatalError):
        code = run_worker(settings, loglevel=loglevel)
    sys.exit(code)


@main.command()
@click.option("--csv", "csv_path", type=EXISTING_FILE, default="data/transactions.csv")
@click.option("--rate", type=float, help="Events per second (default: as fast as possible).")
@click.option("--speedup", type=float, help="Replay at N times the pace of the timestamps.")
@click.option("--limit", type=int, help="Produce at most N events.")
@click.option(
    "--loops",
    type=int,
    default=1,
    help="Passes over the file (0 = forever); later passes get new ids and times.",
)
@click.option("--rejects", "rejects_path", type=PATH, help="Where bad rows are kept.")
@click.option(
    "--pseudonymize",
    is_flag=True,
    help="Replace account ids by keyed HMACs (key: PSEUDONYM_KEY) before they leave.",
)
@click.option(
    "--checkpoint",
    type=FILE,
    help="Record progress here (default with --resume: <csv>.checkpoint.json).",
)
@click.option(
    "--resume", is_flag=True, help="Start after the last line the checkpoint says was delivered."
)
@click.option(
    "--labels",
    is_flag=True,
    help="Also send each row's is_fraud to LABELS_TOPIC, LABEL_DELAY_DAYS later in event time.",
)
@click.option("--no-progress", is_flag=True)
def produce(csv_path, pseudonymize, checkpoint, resume, labels, no_progress, **options) -> None:
    """Replay a CSV onto the transactions topic (KAFKA_BOOTSTRAP_SERVERS)."""
    from fraudstream.broker import ensure_topics
    from producer.checkpoint import CheckpointError
    from producer.csv_source import CsvFormatError
    from producer.replay import ReplayOptions, replay

    settings = _settings()
    bootstrap = _need_cluster(settings)
    ensure_topics(bootstrap, settings)
    key = None
    if pseudonymize:
        from producer.pseudonymize import PseudonymKeyError, check_key

        try:
            key = check_key(reveal(settings.pseudonym_key))
        except PseudonymKeyError as exc:
            raise click.UsageError(str(exc)) from exc
    if resume and checkpoint is None:
        checkpoint = csv_path.with_suffix(".checkpoint.json")
    options = ReplayOptions(
        **options,  # rate, speedup, limit, loops, rejects_path
        progress=not no_progress,
        pseudonym_key=key,
        checkpoint_path=checkpoint,
        resume=resume,
        labels_topic=settings.labels_topic if labels else None,
        label_delay_s=settings.label_delay_days * 86400,
    )
    with _reported(CsvFormatError, CheckpointError):
        stats = replay(
            csv_path, bootstrap, settings.transactions_topic, options, settings.kafka_config()
        )
    click.echo(
        f"produced {stats.produced:,} events in {stats.seconds:.1f} s "
        f"({stats.events_per_s:,.0f}/s); delivered {stats.delivered:,}, failed {stats.failed:,}, "
        f"bad rows skipped {stats.rejected:,}"
        + (f" (kept in {stats.rejects_path})" if stats.rejects_path else "")
        + (f"; labels sent {stats.labels_sent:,}" if labels else "")
    )
    if stats.failed:
        raise click.ClickException("some events were not delivered: " + "; ".join(stats.errors))


@main.command()
@click.option("--from-beginning", is_flag=True, help="Start at the oldest alert.")
@click.option("--max", "max_alerts", type=int, help="Stop after N alerts.")
@click.option("--idle-timeout", type=float, help="Stop after N seconds without an alert.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of each alert.")
def alerts(from_beginning, max_alerts, idle_timeout, as_json) -> None:
    """Follow the alerts topic and print each alert with its reasons."""
    from fraudstream.alerts import tail_alerts

    settings = _settings()
    _need_cluster(settings)
    tail_alerts(settings, from_beginning=from_beginning, max_alerts=max_alerts,
                idle_timeout_s=idle_timeout, as_json=as_json)  # fmt: skip


@main.command()
@click.option("--rows", type=int, default=60_000)
@click.option("--days", type=int, default=90)
@click.option("--start", default="2026-01-01", help="First day (UTC).")
@click.option("--seed", type=int, default=7)
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=None,
    help="Accounts [default: one per 40 rows]; many with few rows each: a cold-start feed.",
)
@click.option("--out", type=FILE, default="data/transactions.csv")
@click.option(
    "--fraud-scale",
    type=click.FloatRange(min=0.01, max=20),
    default=1.0,
    help="Multiply the account-takeover, card-testing and high-amount shares.",
)
@click.option("--compromised-merchants", type=click.IntRange(min=0), default=4)
@click.option(
    "--compromised-days",
    type=click.IntRange(min=1),
    default=5,
    help="How long each compromised merchant's sales are all fraud.",
)
@click.option(
    "--above-amount-share",
    type=click.FloatRange(min=0, max=0.1),
    default=0.0,
    help="Every sale above a fixed amount is fraud: about this share of them (the amount drawn "
    "per set).",
)
@click.option(
    "--multiplied-accounts",
    type=click.FloatRange(min=0, max=0.5),
    default=0.0,
    help="Share of accounts some of whose amounts are multiplied for weeks (fraud; the "
    "multiplier and the weeks drawn per set).",
)
@click.option("--locations/--no-locations", default=True, help="Fill the location column.")
@click.option("--integer-ids", is_flag=True, help="Account and transaction ids as integers.")
def generate(out: Path, **config) -> None:
    """Write a synthetic labelled transactions CSV (is_fraud, fraud_scenario)."""
    from producer.generate import GeneratorConfig, write_csv

    started = time.monotonic()
    frame = write_csv(out, GeneratorConfig(**config))  # the other options are its fields
    counts = frame["fraud_scenario"][frame["is_fraud"] == 1].value_counts().to_dict()
    click.echo(
        f"wrote {len(frame):,} rows to {out} in {time.monotonic() - started:.1f} s; "
        f"fraud {frame['is_fraud'].mean():.2%}: {counts}"
    )


@main.command()
@DB_OPTION
@click.option(
    "--csv",
    type=EXISTING_FILE,
    help="Take is_fraud and fraud_scenario from this CSV (default: the stored columns).",
)
@click.option("--test-from", help="First day of the test period (default: see --test-fraction).")
@click.option(
    "--test-fraction",
    type=float,
    default=0.5,
    help="The test period is this later share of the event-time span.",
)
@click.option("--k", type=int, default=100, help="Accounts per day for card precision@k.")
@click.option("--plot", type=FILE, help="Save the precision-recall curves here (PNG).")
@click.option("--json", "json_path", type=FILE, help="Save the figures as JSON.")
@click.option(
    "--baselines/--no-baselines",
    default=True,
    help="Beside the stream's scores, batch models trained once on the week ending 7 days "
    "before the test period (logistic regression, random forest, gradient boosting).",
)
def evaluate(db, json_path, **options) -> None:
    """Measure detection on a run over a labelled CSV, on a test period after the training one."""
    from fraudstream.evaluate import EvaluationError
    from fraudstream.evaluate import evaluate as run_evaluation

    settings = _settings(db)
    if settings.sqlite_path and not Path(settings.sqlite_path).is_file():
        raise click.ClickException(
            f"{settings.sqlite_path}: no such database; run the pipeline first"
        )
    with _reported(EvaluationError):  # options: csv, test_from, test_fraction, k, plot, baselines
        report = run_evaluation(settings.database_url, **options)
    click.echo(report.format())
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(report.to_json())
        click.echo(f"figures: {json_path}")


@main.group()
def rules() -> None:
    """Fraud rules as data (YAML, CEL expressions): check a file, backtest it on stored traffic,
    apply it to the running processors, list what is live."""


RULES_FILE = click.argument("rules_file", type=EXISTING_FILE, required=False)


def _rules(rules_file: Path | None):
    from stream_processor.rules import DEFAULT_RULES, RuleError, load_rules_file

    with _reported(RuleError):
        return load_rules_file(rules_file or DEFAULT_RULES)


@rules.command("check")
@RULES_FILE
def rules_check(rules_file: Path | None) -> None:
    """Validate a rule file (default: the shipped rules) and list its rules."""
    _show_rules(_rules(rules_file))


@rules.command("apply")
@click.argument("rules_file", type=EXISTING_FILE)
def rules_apply(rules_file: Path) -> None:
    """Validate a rule file and publish it on the rules topic (RULES_TOPIC): every processor
    scores with it within a second, without a restart. A file with any bad rule is refused
    whole, and the live rules stay."""
    from confluent_kafka import KafkaException

    from fraudstream.broker import BrokerError, ensure_topics
    from stream_processor.rules import RuleError
    from stream_processor.rules_feed import RulesTopicError, apply

    ruleset = _rules(rules_file)
    settings = _settings()
    with _reported(RulesTopicError, RuleError, KafkaException, BrokerError):
        ensure_topics(_need_cluster(settings), settings)
        applied = apply(settings, ruleset)
    live = applied.live
    if not applied.published:
        click.echo(f"unchanged: version {live.version} holds these rules")
        return
    click.echo(
        f"published rules version {live.version} on {settings.rules_topic} "
        f"({len(live.rules)} rules, {len(live.enabled)} enabled):"
    )
    for line in applied.changes:
        click.echo(f"  {line}")


@rules.command("list")
@click.option("--version", type=int, help="The rule set of this version (default: the live one).")
def rules_list(version: int | None) -> None:
    """Show the rules live on the rules topic (RULES_TOPIC), or those of an earlier version
    (transactions.rules_version), and the messages refused since."""
    from stream_processor.rules_feed import RulesTopicError, read_rules

    settings = _settings()
    _need_cluster(settings)
    with _reported(RulesTopicError):  # a missing topic too: it is not created here
        topic = read_rules(settings)
    shown = topic.live
    if version is not None:
        shown = next((r for r in topic.applied if r.version == version), None)
        if shown is None:
            raise click.ClickException(
                f"no rule set of version {version} on {settings.rules_topic}; versions: "
                + (", ".join(str(r.version) for r in topic.applied) or "none")
            )
    if shown is None:
        click.echo(
            f"no rule set on {settings.rules_topic} yet: a processor publishes its RULES_FILE "
            "(default: the shipped rules) when it starts; or `fraudstream rules apply FILE`"
        )
    else:
        state = "live" if shown is topic.live else "not live"
        click.echo(
            f"rules version {shown.version} ({state}), from {shown.source or 'no source'}, "
            f"published {shown.published_at or 'at an unknown time'}:"
        )
        _show_rules(shown)
    for dead in topic.refused:
        if topic.live is None or dead["source_offset"] > topic.live.version:
            click.echo(f"refused: {dead['error']}", err=True)


def _show_rules(ruleset) -> None:
    for rule in ruleset.rules:
        state = "" if rule.enabled else "  (disabled)"
        # on one line: a line break in an expression's text would print as a rule of its own
        expression = re.sub(r"[\r\n\t]+", " ", rule.expression)
        click.echo(f"{rule.id:<24} {rule.action:<5} {rule.severity:<8} {expression}{state}")


@rules.command("backtest")
@RULES_FILE
@DB_OPTION
@click.option("--since", help="Only transactions from this UTC date or time on (2026-03-01).")
def rules_backtest(rules_file: Path | None, db: Path | None, since: str | None) -> None:
    """Evaluate a rule file (default: the shipped rules) over the stored transactions: hits,
    share of traffic, precision and recall against the labels known, overlap with the models."""
    from fraudstream.backtest import BacktestError, backtest

    ruleset = _rules(rules_file)
    settings = _settings(db)
    if settings.sqlite_path and not Path(settings.sqlite_path).is_file():
        raise click.ClickException(
            f"{settings.sqlite_path}: no such database; run the pipeline first"
        )
    with _reported(BacktestError):
        report = backtest(settings.database_url, ruleset, since, settings.supervised_flag_threshold)
    click.echo(report.format())


@main.command()
@click.option("--port", type=int, default=9092)
def broker(port: int) -> None:
    """Run the embedded Tansu broker in the foreground (memory only) until Ctrl-C."""
    from fraudstream.broker import EmbeddedBroker

    with EmbeddedBroker(port=port) as b:
        click.echo(f"embedded broker on {b.bootstrap}; in another shell:")
        click.echo(f"  export KAFKA_BOOTSTRAP_SERVERS={b.bootstrap}")
        with contextlib.suppress(KeyboardInterrupt):
            b.proc.wait()


@main.command()
@DB_OPTION
@click.option("--every", type=float, help="Build every N seconds until Ctrl-C (default: once).")
@click.option("--select", help="dbt node selection, e.g. fraud_flags+.")
@click.option("--full-refresh", is_flag=True, help="Rebuild incremental models from scratch.")
def batch(db, every, select, full_refresh) -> None:
    """Run `dbt build` (models and tests) on the database, once or on a schedule."""
    from batch.build import BuildError, dbt_build, run_every

    settings = _settings(db)
    if every:
        with contextlib.suppress(KeyboardInterrupt):
            run_every(settings.database_url, every, select=select, full_refresh=full_refresh)
        return
    with _reported(BuildError):
        outcome = dbt_build(settings.database_url, select=select, full_refresh=full_refresh)
    click.echo(outcome.describe())
    if not outcome.ok:
        sys.exit(1)


@main.command()
@DB_OPTION
@click.option(
    "--host",
    default="127.0.0.1",
    help="Address to listen on. Any other than loopback needs a login (DASHBOARD_PASSWORD_HASH).",
)
@click.option("--port", type=int, default=8001)
def dashboard(db, host, port) -> None:
    """Serve the dashboard (Datasette, read-only) on the database until Ctrl-C."""
    import os

    from fraudstream.dashboard import DASHBOARD_PATH, DashboardError, Login, datasette_command

    settings = _settings(db)
    if not settings.sqlite_path:
        raise click.UsageError("the dashboard reads SQLite: DATABASE_URL must be sqlite:///")
    with _reported(DashboardError, FileNotFoundError):
        login = Login.from_settings(settings)
        cmd = datasette_command(Path(settings.sqlite_path), host, port, login)
    behind = f", login as {login.user}" if login else ""
    click.echo(f"dashboard: http://{host}:{port}{DASHBOARD_PATH}  (Ctrl-C to stop{behind})")
    os.execv(cmd[0], cmd)


@main.command("settings")
def show_settings() -> None:
    """Every setting: environment variable, current value, meaning."""
    current = _settings()
    for (env, default, doc), value in zip(describe(), current.to_env_all(), strict=True):
        click.echo(f"{env:<26} {value!s:<24} {doc}  (default {default})")


if __name__ == "__main__":  # pragma: no cover
    main()
