"""Exports (web and command line), their manifests, and offline verification of a file."""

import csv
import hashlib
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.http import StreamingHttpResponse

from promotions import audit
from promotions.audit import verify as audit_verify
from promotions.models import AuditEvent
from tests.factories import audit_history, note_acceptance, sales_forecast_review
from tests.tampering import tamper, tampering_db

pytestmark = pytest.mark.django_db

COLUMNS = [
    "sequence",
    "created_at",
    "actor_username",
    "actor_name",
    "action",
    "meaning",
    "model_name",
    "version",
    "from_stage",
    "to_stage",
    "request_id",
    "details",
    "prev_hash",
    "hash",
    "signature_name",
    "signature_username",
    "signature_time",
    "signature_meaning",
    "signature_digest",
]


@pytest.fixture
def history(requester, reviewer):
    """Entries with the awkward content real logs have: commas, quotes, non-ASCII, nulls."""
    return [
        *sales_forecast_review(requester, reviewer),
        audit.record(action="registry.drift", meaning="churn v12 moved to Staging without a request"),
        *audit_history(4, model_name="churn", version=12, to_stage="Staging"),
    ]


def download(client, url: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.content
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content)


def unescape(cell: str) -> str:
    return cell[1:] if cell.startswith("'") else cell


def payload_from_csv(row: dict) -> dict:
    """What the documentation tells an outside verifier to do with a CSV row."""
    values = {name: unescape(value) for name, value in row.items()}
    return {
        **values,
        "sequence": int(values["sequence"]),
        "version": int(values["version"]) if values["version"] else None,
        "request_id": int(values["request_id"]) if values["request_id"] else None,
        "details": json.loads(values["details"]),
    }


def csv_line(cells: list[str]) -> str:
    """A row written by the csv module, formula-escaped as documented."""
    escaped = ["'" + c if c[:1] in ("=", "+", "-", "@", "\t", "\r", "'") else c for c in cells]
    buffer = io.StringIO()
    csv.writer(buffer).writerow(escaped)
    return buffer.getvalue()


# --- the web exports --------------------------------------------------------------------------


def test_csv_export_streams_every_entry_with_every_column(client, auditor, history):
    client.force_login(auditor)
    body = download(client, "/audit/export.csv").decode()
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    assert body.startswith(",".join(COLUMNS) + "\r\n")
    events = {e.sequence: e for e in AuditEvent.objects.all()}
    assert [int(r["sequence"]) for r in rows] == sorted(s for s in events if s <= history[-1].sequence)
    for row in rows:
        event = events[int(row["sequence"])]
        payload = payload_from_csv(row)
        assert payload["created_at"] == audit.utc_iso(event.created_at)
        assert row["details"] == audit.canonical_json(event.details)
        assert (payload["actor_name"], payload["meaning"]) == (event.actor_name, event.meaning)
        assert payload["hash"] == event.hash == audit.compute_hash(payload)
    approved = next(r for r in rows if r["action"] == "review.approved")
    assert (approved["actor_username"], approved["actor_name"]) == ("rex", "Rex Tester")
    assert (approved["version"], approved["request_id"]) == ("5", "41")
    drift = next(r for r in rows if r["action"] == "registry.drift")
    assert (drift["version"], drift["request_id"], drift["actor_name"]) == ("", "", "system")


def test_csv_rows_are_what_the_csv_module_writes(client, auditor, history):
    audit.record(action="registry.drift", meaning='multi\nline "quoted", with\r\ncarriage return')
    client.force_login(auditor)
    body = download(client, "/audit/export.csv").decode()
    rows = list(csv.reader(io.StringIO(body, newline="")))
    assert "".join(csv_line([unescape(c) for c in row]) for row in rows) == body


def test_jsonl_export_has_one_object_a_line_with_details_as_an_object(client, auditor, history):
    client.force_login(auditor)
    body = download(client, "/audit/export.jsonl").decode()
    lines = body.splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    assert all(list(row) == COLUMNS for row in rows)
    # compact, UTF-8, keys in column order: what json.dumps writes
    assert [json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows] == lines
    assert "Zoë" in body
    for row in rows:
        assert isinstance(row["details"], dict)
        assert row["hash"] == audit.compute_hash(row)
    assert rows[-1]["sequence"] == history[-1].sequence
    assert rows[-1]["version"] == 12 and rows[-1]["request_id"] is None


def test_every_export_is_audited_and_never_contains_itself(client, auditor, history):
    client.force_login(auditor)
    response = client.get("/audit/export.jsonl")
    through = int(response["X-Audit-Through"])
    exported = AuditEvent.objects.order_by("-sequence").first()
    # recorded before the first byte is sent, yet not in the file it records
    rows = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert exported.action == "audit.exported"
    assert exported.actor_username == "alice" and exported.actor_name == "Alice Tester"
    assert exported.details == {"format": "jsonl", "filter": {}, "through": through, "via": "web"}
    assert [row["sequence"] for row in rows] == list(range(1, through + 1))
    assert exported.sequence == through + 1
    assert 'filename="audit-log-all-through-' in response["Content-Disposition"]


def test_an_export_records_its_filter(client, auditor, history):
    client.force_login(auditor)
    response = client.get("/audit/export.csv?model=churn&stage=staging")
    b"".join(response.streaming_content)
    exported = AuditEvent.objects.order_by("-sequence").first()
    assert exported.details["format"] == "csv"
    assert exported.details["filter"] == {"model": "churn", "stage": "Staging"}
    assert "model=churn, stage=Staging" in exported.meaning
    assert 'filename="audit-log-filtered-through-' in response["Content-Disposition"]


def test_exports_take_the_same_filters_as_the_page(client, auditor, history):
    client.force_login(auditor)
    body = download(client, "/audit/export.csv?model=churn&stage=staging&text=entry").decode()
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    assert [r["meaning"] for r in rows] == [f"entry {i}" for i in range(4)]


def test_csv_cells_that_would_run_as_formulas_are_escaped(client, auditor, tmp_path):
    audit.record(
        action="registry.drift",
        meaning='=HYPERLINK("http://evil.example","click")',
        model_name="+cmd|' /C calc'!A0",
        from_stage="-2+3",
        to_stage="@SUM(A1:A2)",
        details={"note": "=1+1"},
    )
    audit.record(action="registry.drift", meaning="\tTabbed", model_name="'quoted", from_stage="\rCR")
    client.force_login(auditor)
    body = download(client, "/audit/export.csv")
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    first, second = rows[-2], rows[-1]
    assert first["meaning"] == "'" + '=HYPERLINK("http://evil.example","click")'
    assert first["model_name"] == "'+cmd|' /C calc'!A0"
    assert first["from_stage"] == "'-2+3" and first["to_stage"] == "'@SUM(A1:A2)"
    assert (second["meaning"], second["model_name"], second["from_stage"]) == (
        "'\tTabbed",
        "''quoted",
        "'\rCR",
    )
    for row in rows:
        assert not row["meaning"].startswith(("=", "+", "-", "@", "\t", "\r"))
    # the escaping is undone before hashing: the file still verifies offline
    manifest = client.get(f"/audit/manifest.json?format=csv&through={rows[-1]['sequence']}").json()
    (tmp_path / "log.csv").write_bytes(body)
    (tmp_path / "log.csv.manifest.json").write_text(json.dumps(manifest))
    call_command("verify_audit_log", "--export", str(tmp_path / "log.csv"))


@pytest.mark.parametrize("url", ["/audit/export.csv", "/audit/export.jsonl"])
@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("since=2026-02-30", "is not a valid date"),
        ("stage=Prodution", "Stage 'Prodution' is not in the stage catalog. Known stages:"),
        ("action=nope", "Action 'nope' is not one the audit log records"),
        ("through=-1", "'through' must be an entry's sequence number"),
    ],
)
def test_bad_filters_give_a_400_with_the_reason_never_an_empty_file(client, auditor, url, query, reason):
    client.force_login(auditor)
    before = AuditEvent.objects.count()
    response = client.get(f"{url}?{query}")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert reason in response.content.decode()
    assert AuditEvent.objects.count() == before  # nothing was exported, so nothing is audited


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("format=xml", "format must be csv or jsonl"),
        ("since=tomorrow&format=csv", "is not a date"),
        ("stage=Nope&format=jsonl", "Stage 'Nope' is not in the stage catalog"),
    ],
)
def test_bad_manifest_requests_are_a_json_400(client, auditor, query, reason):
    client.force_login(auditor)
    response = client.get(f"/audit/manifest.json?{query}")
    assert response.status_code == 400
    assert reason in response.json()["error"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_web_manifest_describes_the_download_and_both_verify_offline(
    client, auditor, history, tmp_path, fmt
):
    client.force_login(auditor)
    head = history[-1].sequence
    data = download(client, f"/audit/export.{fmt}?through={head}")
    manifest = client.get(f"/audit/manifest.json?format={fmt}&through={head}").json()
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["rows"] == head and (manifest["first_sequence"], manifest["last_sequence"]) == (1, head)
    assert manifest["chain_head"] == history[-1].hash
    assert manifest["database_head"] == {"sequence": head, "hash": history[-1].hash}
    assert manifest["complete"] is True and manifest["filter"] == {}
    path = tmp_path / f"download.{fmt}"
    path.write_bytes(data)
    (tmp_path / f"download.{fmt}.manifest.json").write_text(json.dumps(manifest))
    call_command("verify_audit_log", "--export", str(path))


# --- the command line -------------------------------------------------------------------------


@pytest.fixture(params=["one process", "in parts"])
def verification(request, monkeypatch):
    """Check files in one process, or (as large files are) in parts by several processes."""
    accepted = []
    if request.param == "in parts":
        monkeypatch.setattr(audit_verify, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(audit_verify, "PARALLEL_PART_BYTES", 500)
        note_acceptance(monkeypatch, audit_verify, "_parallel_walk", accepted)
    return accepted


def export(tmp_path, fmt: str, *filters: str, name: str = "log"):
    path = tmp_path / f"{name}.{fmt}"
    call_command("export_audit_log", "--format", fmt, "-o", str(path), *filters)
    manifest = json.loads((tmp_path / f"{name}.{fmt}.manifest.json").read_text())
    return path, manifest


def verify(path) -> str:
    """Run verify_audit_log --export; return the failure message (exit code 1) or ''."""
    try:
        call_command("verify_audit_log", "--export", str(path))
    except CommandError as exc:
        assert exc.returncode == 1
        return str(exc)
    return ""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_the_command_writes_the_file_and_its_manifest(tmp_path, history, fmt, capsys):
    path, manifest = export(tmp_path, fmt)
    last = history[-1]
    assert manifest["format"] == fmt
    assert manifest["rows"] == last.sequence
    assert (manifest["first_sequence"], manifest["last_sequence"]) == (1, last.sequence)
    assert manifest["chain_head"] == last.hash
    assert manifest["database_head"] == {"sequence": last.sequence, "hash": last.hash}
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["filter"] == {} and manifest["complete"] is True
    assert manifest["generated_at"].endswith("+00:00")
    assert f"Wrote {last.sequence} entries" in capsys.readouterr().out
    recorded = AuditEvent.objects.order_by("-sequence").first()
    assert recorded.action == "audit.exported" and recorded.actor_name == "system"
    assert recorded.details["via"] == "cli" and recorded.details["format"] == fmt
    assert verify(path) == ""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_a_filtered_export_checks_each_row(tmp_path, history, fmt):
    path, manifest = export(
        tmp_path, fmt, "--model", "churn", "--stage", "staging", "--action", "registry.drift"
    )
    assert manifest["filter"] == {"model": "churn", "stage": "Staging", "action": "registry.drift"}
    assert manifest["complete"] is False
    assert manifest["rows"] == 4
    assert (manifest["first_sequence"], manifest["last_sequence"]) == (
        history[3].sequence,
        history[6].sequence,
    )
    assert manifest["chain_head"] == history[6].hash
    assert verify(path) == ""


def test_the_command_refuses_bad_filters_with_the_reason(tmp_path):
    with pytest.raises(CommandError, match="The start '2026-02-30' is not a valid date"):
        call_command(
            "export_audit_log", "--format", "csv", "-o", str(tmp_path / "x.csv"), "--since", "2026-02-30"
        )
    with pytest.raises(CommandError, match="Stage 'Prod' is not in the stage catalog"):
        call_command("export_audit_log", "--format", "csv", "-o", str(tmp_path / "x.csv"), "--stage", "Prod")
    assert not (tmp_path / "x.csv").exists()


# --- tampering --------------------------------------------------------------------------------


def lines_of(path) -> list[str]:
    # bytes, then decode: read_text would turn the CSV's CRLF into LF
    return path.read_bytes().decode().splitlines(keepends=True)


def write_lines(path, lines) -> None:
    path.write_text("".join(lines), encoding="utf-8", newline="")


def row_index(lines, fmt, sequence) -> int:
    prefix = f"{sequence}," if fmt == "csv" else f'{{"sequence":{sequence},'
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def reseal_manifest(path, **changes) -> None:
    """What a forger does after editing the file: recompute the manifest's SHA-256 (and more)."""
    manifest_file = path.with_name(path.name + ".manifest.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.update(changes)
    manifest_file.write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("reseal", [False, True], ids=["as-is", "manifest-resealed"])
@pytest.mark.usefixtures("verification")
def test_an_edited_row_is_named(tmp_path, history, fmt, reseal):
    path, _ = export(tmp_path, fmt)
    lines = lines_of(path)
    target = history[4].sequence
    i = row_index(lines, fmt, target)
    lines[i] = lines[i].replace("entry 1", "entry 7")
    write_lines(path, lines)
    if reseal:
        reseal_manifest(path)
    assert f"broken at entry #{target}: its hash does not match its content" in verify(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_a_dropped_row_is_named(tmp_path, history, fmt):
    path, _ = export(tmp_path, fmt)
    lines = lines_of(path)
    dropped = history[2].sequence
    del lines[row_index(lines, fmt, dropped)]
    write_lines(path, lines)
    reseal_manifest(path, rows=len(lines) - (1 if fmt == "csv" else 0))
    message = verify(path)
    assert f"broken at entry #{dropped + 1}: sequence {dropped + 1} follows {dropped - 1}" in message


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("flags", "swapped"),
    [
        pytest.param((), (3, 4), id="the whole log"),
        pytest.param(("--model", "churn"), (3, 5), id="a filtered export"),
    ],
)
@pytest.mark.usefixtures("verification")
def test_reordered_rows_are_named(tmp_path, history, fmt, flags, swapped):
    path, _ = export(tmp_path, fmt, *flags)
    lines = lines_of(path)
    a, b = (row_index(lines, fmt, history[n].sequence) for n in swapped)
    lines[a], lines[b] = lines[b], lines[a]
    write_lines(path, lines)
    assert f"broken at entry #{history[4].sequence}: sequence {history[4].sequence} follows" in verify(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m, h: {"rows": m["rows"] - 1}, lambda h: f"#{h[-1].sequence}: the manifest announces"),
        (lambda m, h: {"rows": m["rows"] + 1}, lambda h: f"#{h[-1].sequence + 1}: the manifest announces"),
        (
            lambda m, h: {"first_sequence": 2},
            lambda h: "#1: the file starts at entry #1, the manifest says #2",
        ),
        (lambda m, h: {"last_sequence": 3}, lambda h: f"#{h[-1].sequence}: the file ends at entry"),
        (
            lambda m, h: {"chain_head": h[-2].hash},
            lambda h: f"#{h[-1].sequence}: its hash is not the manifest",
        ),
        (lambda m, h: {"sha256": "0" * 64}, lambda h: "every row checks, but the file's SHA-256 is"),
        (lambda m, h: {"complete": False}, lambda h: "'complete' does not agree with its filter"),
    ],
    ids=["rows-less", "rows-more", "first", "last", "chain-head", "sha256", "complete"],
)
@pytest.mark.usefixtures("verification")
def test_an_edited_manifest_is_caught(tmp_path, history, fmt, edit, expected):
    path, manifest = export(tmp_path, fmt)
    manifest_file = tmp_path / f"log.{fmt}.manifest.json"
    manifest.update(edit(manifest, history))
    manifest_file.write_text(json.dumps(manifest))
    assert expected(history) in verify(path)


def test_a_row_quoted_differently_is_named(tmp_path, history):
    path, _ = export(tmp_path, "csv")
    lines = lines_of(path)
    i = row_index(lines, "csv", history[5].sequence)
    lines[i] = lines[i].replace(",entry 2,", ',"entry 2",')
    write_lines(path, lines)
    assert f"#{history[5].sequence}: the row is not written the way the export writes it" in verify(path)
    # With the manifest's SHA-256 recomputed, what is left to check is the content, and it is
    # authentic: the quoting of a cell is not part of what the hashes prove.
    reseal_manifest(path)
    assert verify(path) == ""


def test_details_written_differently_fail_even_with_a_resealed_manifest(tmp_path, history):
    path, _ = export(tmp_path, "jsonl")
    lines = lines_of(path)
    i = row_index(lines, "jsonl", history[1].sequence)
    lines[i] = lines[i].replace('"approvals":1', '"approvals":1.0')
    write_lines(path, lines)
    reseal_manifest(path)
    assert f"#{history[1].sequence}: its hash does not match its content" in verify(path)


def forge_row(path, fmt, sequence, meaning):
    """Edit a row and recompute its own hash, as someone who read the documentation would."""
    lines = lines_of(path)
    i = row_index(lines, fmt, sequence)
    if fmt == "csv":
        row = dict(zip(COLUMNS, next(csv.reader([lines[i]])), strict=True))
        payload = payload_from_csv(row)
        payload["meaning"] = meaning
        payload["hash"] = audit.compute_hash(payload)
        cells = {**{k: unescape(v) for k, v in row.items()}, "meaning": meaning, "hash": payload["hash"]}
        lines[i] = csv_line([cells[c] for c in COLUMNS])
    else:
        row = json.loads(lines[i])
        row["meaning"] = meaning
        row["hash"] = audit.compute_hash(row)
        lines[i] = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
    write_lines(path, lines)
    return payload["hash"] if fmt == "csv" else row["hash"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_a_forged_row_with_a_recomputed_hash_breaks_the_next_link(tmp_path, history, fmt):
    path, _ = export(tmp_path, fmt)
    forge_row(path, fmt, history[4].sequence, "entry 1 (never happened)")
    reseal_manifest(path)
    message = verify(path)
    assert f"#{history[5].sequence}: its prev_hash does not match the entry before it" in message


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_a_forged_last_row_of_a_filtered_export_is_caught_by_the_database(tmp_path, history, fmt):
    path, _ = export(tmp_path, fmt, "--model", "churn")
    forged = forge_row(path, fmt, history[-1].sequence, "entry 3 (rewritten)")
    reseal_manifest(path, chain_head=forged)
    message = verify(path)
    assert f"#{history[-1].sequence}: the database's entry #{history[-1].sequence} has hash" in message


@tampering_db
def test_an_export_names_the_entries_the_database_no_longer_has(tmp_path, history):
    # As after restoring a backup taken before the export: the database's own chain is whole.
    path, _ = export(tmp_path, "jsonl")
    kept, head = history[-3].sequence, history[-1].sequence
    tamper("DELETE FROM promotions_auditevent WHERE sequence > %s", [kept])
    assert verify(path) == (
        f"Audit log broken at entry #{kept + 1}: the database ends at entry #{kept}, but it held "
        f"entries up to #{head} when this export was cut: entries #{kept + 1} to #{head} are missing "
        "from the database (restored from an earlier backup, or removed)."
    )


def test_a_missing_manifest_is_reported(tmp_path, history):
    path, _ = export(tmp_path, "csv")
    (tmp_path / "log.csv.manifest.json").unlink()
    # a problem with the file as a whole names no entry (not "entry #None")
    assert (
        verify(path)
        == "Audit log export broken: there is no manifest log.csv.manifest.json beside the export."
    )


@pytest.mark.usefixtures("verification")
def test_a_file_that_does_not_match_its_manifest_names_no_entry(tmp_path, history):
    path, _ = export(tmp_path, "jsonl")
    manifest_file = tmp_path / "log.jsonl.manifest.json"
    manifest_file.write_text(json.dumps({**json.loads(manifest_file.read_text()), "sha256": "0" * 64}))
    message = verify(path)
    assert message.startswith("Audit log export broken: every row checks, but the file's SHA-256 is ")
    assert "#None" not in message


def test_an_empty_filtered_export_verifies(tmp_path):
    path, manifest = export(tmp_path, "csv", "--model", "nothing-like-this")
    assert manifest["rows"] == 0 and manifest["first_sequence"] is None
    assert path.read_bytes() == (",".join(COLUMNS) + "\r\n").encode()
    assert verify(path) == ""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.usefixtures("verification")
def test_escapes_and_control_characters_verify(tmp_path, fmt):
    audit.record(
        action="registry.drift",
        meaning='tab\there, new\nline\r\n, back\\slash, "quote", \u2028, 🚀',
        model_name="naïve",
        details={"k": 'v\n\t"\\', "ü": [1, 2.5, None, True, {"z": "", "a": "é"}]},
    )
    path, _ = export(tmp_path, fmt)
    assert verify(path) == ""
    # the same file, bytes changed in that row: named through the slow path as well
    data = path.read_bytes().replace("naïve".encode(), b"naive")
    path.write_bytes(data)
    assert "its hash does not match its content" in verify(path)


def test_a_number_cell_that_smuggles_json_is_refused(tmp_path, history):
    path, _ = export(tmp_path, "csv")
    lines = lines_of(path)
    i = row_index(lines, "csv", history[0].sequence)
    cells = [unescape(c) for c in next(csv.reader([lines[i]]))]
    cells[COLUMNS.index("request_id")] = '41,"sequence":4'
    lines[i] = csv_line(cells)
    write_lines(path, lines)
    reseal_manifest(path)
    assert f"#{history[0].sequence}: its request_id '41,\"sequence\":4' is not a number" in verify(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_large_file_is_accepted_in_parts_even_with_newlines_inside_cells(
    tmp_path, history, verification, fmt
):
    audit_history(
        30, meaning=lambda i: f'line one\nline "two", {i}\r\n' * (i % 3), details=lambda i: {"i": i}
    )
    path, _ = export(tmp_path, fmt)
    assert verify(path) == ""
    assert verification in ([], [True])  # in parts: the workers' walk is what accepted it
