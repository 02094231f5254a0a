"""The fleet store of docs/fleet.md in the real ClickHouse engine (chdb, in-process).

Usage: clickhouse.py FLEET_MD QUERIES_JSON LOG...

Creates a stand-in for the Collector exporter's `otel_logs` table (the views read only its
`Body`), runs the SQL blocks of FLEET_MD marked `-- fleet: tables` and `-- fleet: views` as
written, loads every line of each LOG into `otel_logs.Body`, then runs the block marked
`-- fleet: who` once per {"port", "at"} of QUERIES_JSON (`at` in RFC 3339), its parameters bound
by the engine as clickhouse-client's --param_port and --param_at bind them. Prints one JSON
object: the row counts of the two tables and each query's rows.
"""

import json
import re
import sys
import tempfile

import chdb.session


def blocks(markdown):
    """The ```sql blocks whose first line is `-- fleet: NAME`, by NAME."""
    found = {}
    for body in re.findall(r"```sql\n(.*?)```", markdown, re.S):
        first, _, rest = body.partition("\n")
        m = re.fullmatch(r"-- fleet: (\w+)", first.strip())
        if m:
            found[m.group(1)] = rest
    for name in ("tables", "views", "who"):
        if name not in found:
            sys.exit(f"docs/fleet.md has no sql block marked `-- fleet: {name}`")
    return found


def statements(sql):
    return [s for s in (p.strip() for p in sql.split(";")) if s]


def ch_time(rfc3339):
    """2026-12-02T08:41:07.187309211Z -> 2026-12-02 08:41:07.187309211, as --param_at takes it."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d\.\d{9})Z", rfc3339)
    if not m:
        sys.exit(f"not an RFC 3339 UTC time with nanoseconds: {rfc3339}")
    return f"{m.group(1)} {m.group(2)}"


def main():
    fleet_md, queries, logs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    sql = blocks(open(fleet_md, encoding="utf-8").read())
    s = chdb.session.Session(tempfile.mkdtemp(prefix="portwatch-fleet-"))
    # The columns of the exporter's otel_logs that matter here.
    s.query(
        "CREATE TABLE otel_logs (Timestamp DateTime64(9) DEFAULT now64(9), Body String, "
        "ResourceAttributes Map(LowCardinality(String), String)) "
        "ENGINE = MergeTree ORDER BY Timestamp"
    )
    for part in ("tables", "views"):
        for st in statements(sql[part]):
            s.query(st)
    for log in logs:
        s.query(
            f"INSERT INTO otel_logs (Body) SELECT line FROM file('{log}', 'LineAsString', 'line String')"
        )
    count = lambda t: int(str(s.query(f"SELECT count() FROM {t}", "CSV")).strip())
    out = {
        "events": count("portwatch_events"),
        "holdings": count("portwatch_holdings"),
        "results": [],
    }
    for q in queries:
        params = {"port": str(int(q["port"])), "at": ch_time(q["at"])}
        text = str(s.query(sql["who"], "JSONEachRow", params=params))
        out["results"].append([json.loads(l) for l in text.splitlines() if l.strip()])
    print(json.dumps(out))


main()
