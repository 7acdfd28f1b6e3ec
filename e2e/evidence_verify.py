"""An independent verifier of Custos evidence, written from docs/evidence.md alone.

It shares no code with the gateway: hashlib for the event chain, `cryptography`'s Ed25519 for
the checkpoints, sqlite3 for the store and plain JSON for bundles. It names problems with the
same kinds as `custos verify` (modified, missing, reordered, signature_invalid, truncated) and,
like it, reports per writer the first problem in chain order.

    events, checkpoints = read_store(path)
    verify_events(events, checkpoints, public_key_hex)   # -> {"ok", "problem", "unsigned_tail", "writers"}
    verify_store(path, public_key_hex)
    verify_bundle(directory, public_key_hex=None)

A problem is {"kind", "writer_id", "seq", "session_id", "detail"}.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
KINDS = ("modified", "missing", "reordered", "signature_invalid", "truncated")
EVENT_FIELDS = ("writer_id", "seq", "at", "session_id", "kind", "payload", "payload_hash", "prev_hash", "hash")
CHECKPOINT_FIELDS = ("writer_id", "seq", "hash", "at", "public_key", "signature")
HEX_RE = re.compile(r"^[0-9a-f]*$")


# --------------------------------------------------------------------------
# the hashes and the signed message


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload_bytes(payload: str | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else payload.encode("utf-8")


def event_hash(event: dict, seq: int | None = None) -> str:
    """SHA-256 of the event header H (eight fields, LF-joined, no trailing LF); `seq` overrides the event's."""
    header = "\n".join(["custos.event.v1", event["writer_id"], str(event["seq"] if seq is None else seq), event["at"],
                        event["session_id"], event["kind"], event["payload_hash"], event["prev_hash"]])
    return sha256_hex(header.encode("utf-8"))


def checkpoint_message(checkpoint: dict) -> bytes:
    return "\n".join(["custos.checkpoint.v1", checkpoint["writer_id"], str(checkpoint["seq"]), checkpoint["hash"],
                      checkpoint["at"]]).encode("utf-8")


def public_key_from_seed(seed_hex: str) -> str:
    """The Ed25519 public key (64 hex digits) of a 32-byte seed given as 64 hex digits (keys.signing_file)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex.strip()))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key_from_file(path: str | Path) -> str:
    return public_key_from_seed(Path(path).read_text())


def signature_valid(checkpoint: dict, trusted_hex: str) -> tuple[bool, str]:
    """(valid, why not): by the trusted key, and the signature verifies over C."""
    if checkpoint.get("public_key") != trusted_hex:
        return False, f"checkpoint signed by key {str(checkpoint.get('public_key'))[:16]}…, not the trusted {trusted_hex[:16]}…"
    signature = checkpoint.get("signature") or ""
    if not isinstance(signature, str) or len(signature) != 128 or not HEX_RE.match(signature):
        return False, "signature is not 128 lowercase hex digits"
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_hex)).verify(bytes.fromhex(signature),
                                                                             checkpoint_message(checkpoint))
    except InvalidSignature:
        return False, "signature does not verify"
    except ValueError as exc:
        return False, f"bad key or signature: {exc}"
    return True, ""


# --------------------------------------------------------------------------
# reading stores and bundles


def read_store(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(events, checkpoints) of a SQLite store, read-only; no checkpoints table reads as none."""
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        events = [dict(r) for r in conn.execute(
            f"SELECT {', '.join(EVENT_FIELDS)} FROM events ORDER BY writer_id, seq")]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        checkpoints = []
        if "checkpoints" in tables:
            checkpoints = [dict(r) for r in conn.execute(
                f"SELECT {', '.join(CHECKPOINT_FIELDS)} FROM checkpoints ORDER BY writer_id, seq")]
        return events, checkpoints
    finally:
        conn.close()


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            value = json.loads(line)
            if not isinstance(value, dict):
                raise ValueError(f"{path.name}:{number}: not a JSON object")
            out.append(value)
    return out


# --------------------------------------------------------------------------
# verification


def _problem(kind: str, writer: str | None, seq: int | None, detail: str, session_id: str | None = None) -> dict:
    assert kind in KINDS
    return {"kind": kind, "writer_id": writer, "seq": seq, "session_id": session_id, "detail": detail}


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        return None


def _retention_cutoffs(chain: list[dict]) -> list[tuple[int, datetime, int]]:
    """(seq, before, through_seq) of each retention event whose payload is intact (hash checked)."""
    out = []
    for e in chain:
        if e["kind"] != "retention" or e["payload"] is None:
            continue
        if sha256_hex(payload_bytes(e["payload"])) != e["payload_hash"]:
            continue
        try:
            body = json.loads(e["payload"])
            before = _parse_time(body.get("before"))
            through = body.get("through_seq")
        except (ValueError, AttributeError):
            before, through = None, None
        at = _parse_time(e["at"])
        # docs/evidence.md: a retention event counts only when its cutoff is not after its own time
        # and it covers only events before it.
        if before is not None and isinstance(through, int) and at is not None and before <= at and through < e["seq"]:
            out.append((e["seq"], before, through))
    return out


def _verify_writer(writer: str, listed: list[dict], checkpoints: list[dict], trusted: str | None,
                   retention_ok: bool, bundle: bool, in_scope=None) -> dict:
    report = {"writer_id": writer, "events": len(listed), "first_seq": None, "last_seq": None,
              "checkpoints": len(checkpoints), "signed_through": 0, "unsigned_tail": 0, "pruned": 0, "withheld": 0,
              "problem": None}
    problems: list[tuple[int, int, dict]] = []   # (seq, order, problem): the least wins

    chain = sorted(listed, key=lambda e: e["seq"])
    if chain:
        report["first_seq"], report["last_seq"] = chain[0]["seq"], chain[-1]["seq"]
    # a bundle lists its events in chain order: the first place where it does not is a reordering
    if bundle:
        for position, (got, want) in enumerate(zip(listed, chain)):
            if got is not want and got["seq"] != want["seq"]:
                problems.append((want["seq"], 0, _problem("reordered", writer, want["seq"],
                                 f"events.jsonl lists seq {got['seq']} where seq {want['seq']} belongs",
                                 want.get("session_id"))))
                break
    cutoffs = _retention_cutoffs(chain) if retention_ok and not bundle else []

    # the events, in seq order, up to the first problem
    prev: dict | None = None
    for e in chain:
        seq = e["seq"]
        if problems and seq > problems[0][0]:
            break
        found = None
        if prev is None:
            expected = 1 if not bundle else seq
        else:
            expected = prev["seq"] + 1
        if seq > expected:
            found = _problem("missing", writer, expected, f"seq {expected} is absent (next present: {seq})")
            problems.append((expected, 1, found))
            break
        if seq < expected:   # a duplicate seq (bundles only: the store's key forbids it)
            found = _problem("reordered", writer, seq, f"seq {seq} appears twice", e["session_id"])
            problems.append((seq, 1, found))
            break
        # the payload
        if e["payload"] is None:
            if bundle:
                report["withheld"] += 1
                if in_scope is not None and in_scope(e):
                    found = _problem("modified", writer, seq, "an in-scope event has no payload", e["session_id"])
            else:
                at = _parse_time(e["at"])
                covered = at is not None and any(r_seq > seq and through >= seq and before > at for r_seq, before, through in cutoffs)
                if covered:
                    report["pruned"] += 1
                else:
                    found = _problem("modified", writer, seq, "payload removed with no retention event covering it",
                                     e["session_id"])
        elif sha256_hex(payload_bytes(e["payload"])) != e["payload_hash"]:
            found = _problem("modified", writer, seq, "payload_hash does not match the payload", e["session_id"])
        # the header hash
        if found is None and event_hash(e) != e["hash"]:
            elsewhere = _hash_valid_at(e, chain)
            if elsewhere is not None:
                found = _problem("reordered", writer, seq, f"the event at seq {seq} has a hash valid for seq {elsewhere}",
                                 e["session_id"])
            else:
                found = _problem("modified", writer, seq, "hash does not match the event header", e["session_id"])
        # the link
        if found is None:
            link = GENESIS if seq == 1 else (prev["hash"] if prev is not None else None)
            if link is not None and e["prev_hash"] != link:
                found = _problem("modified", writer, seq, "prev_hash does not link to the previous event's hash",
                                 e["session_id"])
        if found is not None:
            problems.append((seq, 1, found))
            break
        prev = e

    # the checkpoints
    by_seq = {e["seq"]: e for e in chain}
    last_seq = chain[-1]["seq"] if chain else 0
    first_seq = chain[0]["seq"] if chain else 1
    signed_through = 0
    truncating: int | None = None
    for c in sorted(checkpoints, key=lambda c: c["seq"]):
        seq = c["seq"]
        if trusted is None:
            valid, why = signature_valid(c, c.get("public_key") or "")
        else:
            valid, why = signature_valid(c, trusted)
        if not valid:
            problems.append((seq, 2, _problem("signature_invalid", writer, seq, f"checkpoint at seq {seq}: {why}")))
            continue
        event = by_seq.get(seq)
        if event is None:
            if seq > last_seq:
                truncating = seq if truncating is None else max(truncating, seq)
            # inside a gap the gap itself is the problem; before a bundle's range it vouches for nothing here
            continue
        if event["hash"] != c["hash"]:
            problems.append((seq, 2, _problem("modified", writer, seq,
                                              "the checkpoint signs a different hash than the event at its seq",
                                              event["session_id"])))
            continue
        signed_through = max(signed_through, seq)
    if truncating is not None:
        problems.append((last_seq + 1, 3, _problem("truncated", writer, last_seq + 1,
                                                   f"the chain ends at seq {last_seq}; a checkpoint signs seq {truncating}")))

    report["signed_through"] = signed_through
    if chain:
        report["unsigned_tail"] = max(0, last_seq - max(signed_through, first_seq - 1))
    if problems:
        problems.sort(key=lambda p: (p[0], p[1]))
        report["problem"] = problems[0][2]
    return report


def _hash_valid_at(event: dict, chain: list[dict]) -> int | None:
    """Another seq for which the event's stored hash is valid (it was moved), or None."""
    candidates: list[int] = []
    # the seq its prev_hash implies (one after the event whose hash it names), then every seq around the chain
    for other in chain:
        if other["hash"] == event["prev_hash"]:
            candidates.append(other["seq"] + 1)
    last = chain[-1]["seq"] if chain else 0
    candidates += range(1, last + 2)
    for seq in candidates:
        if seq != event["seq"] and event_hash(event, seq) == event["hash"]:
            return seq
    return None


def verify_events(events: list[dict], checkpoints: list[dict], public_key_hex: str | None, retention_ok: bool = True,
                  bundle: bool = False, in_scope=None) -> dict:
    """Verify every writer's chain and checkpoints.

    events: dicts with the events table's columns (payload the stored text, or None); in a store any
    order (they are sorted by seq), in a bundle the listed order is checked too.
    public_key_hex: the trusted key; None trusts each checkpoint's own public_key (self-consistency only).
    retention_ok: a NULL payload is legitimate when a later retention event covers it (store); when
    False every NULL payload is `modified`. bundle: the chain may start after seq 1 (linked from its
    first event) and null payloads are withheld; in_scope(event) -> bool marks events that must keep theirs.
    Returns {"ok", "problem", "unsigned_tail", "events", "writers": [...]}; problem is the first
    writer's (by writer id) first problem in chain order.
    """
    writers: dict[str, list[dict]] = {}
    for e in events:
        writers.setdefault(e["writer_id"], []).append(e)
    by_writer_cp: dict[str, list[dict]] = {}
    for c in checkpoints:
        by_writer_cp.setdefault(c["writer_id"], []).append(c)
    reports = []
    for writer in sorted(set(writers) | set(by_writer_cp)):
        reports.append(_verify_writer(writer, writers.get(writer, []), by_writer_cp.get(writer, []),
                                      public_key_hex, retention_ok, bundle, in_scope))
    problem = next((r["problem"] for r in reports if r["problem"] is not None), None)
    return {"ok": problem is None, "problem": problem, "unsigned_tail": sum(r["unsigned_tail"] for r in reports),
            "events": len(events), "writers": reports}


def verify_store(path: str | Path, public_key_hex: str | None) -> dict:
    events, checkpoints = read_store(path)
    return verify_events(events, checkpoints, public_key_hex, retention_ok=True, bundle=False)


def _bundle_scope(manifest: dict):
    """in_scope(event) from the manifest's scope, when it names a session or a time range."""
    scope = manifest.get("scope")
    if not isinstance(scope, dict):
        return None
    session = scope.get("session") or scope.get("session_id")
    if session:
        return lambda e: e["session_id"] == session
    since, until = _parse_time(scope.get("since") or ""), _parse_time(scope.get("until") or "")
    if since or until:
        def in_range(e: dict) -> bool:
            at = _parse_time(e["at"])
            return at is not None and (since is None or at >= since) and (until is None or at <= until)
        return in_range
    return None


def verify_bundle(directory: str | Path, public_key_hex: str | None = None) -> dict:
    """Verify an evidence bundle folder; trusts its public-key.txt unless public_key_hex is given."""
    directory = Path(directory)
    events = read_jsonl(directory / "events.jsonl")
    checkpoints = read_jsonl(directory / "checkpoints.jsonl") if (directory / "checkpoints.jsonl").exists() else []
    bundled_key = (directory / "public-key.txt").read_text().strip() if (directory / "public-key.txt").exists() else None
    trusted = public_key_hex or bundled_key
    manifest = {}
    manifest_bytes = b""
    if (directory / "manifest.json").exists():
        manifest_bytes = (directory / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    result = verify_events(events, checkpoints, trusted, retention_ok=False, bundle=True, in_scope=_bundle_scope(manifest))

    # The manifest (scope and extent) is signed with the checkpoint key over its exact bytes.
    manifest_problem = None
    signature_path = directory / "manifest.sig"
    try:
        signature = bytes.fromhex(signature_path.read_text().strip()) if signature_path.exists() else b""
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted or "")).verify(signature, manifest_bytes)
    except (ValueError, InvalidSignature):
        manifest_problem = _problem("signature_invalid", "manifest.json", 0, "manifest.sig does not verify over manifest.json")
    if manifest_problem is None:
        for writer in manifest.get("writers", []):
            own = [e for e in events if e.get("writer_id") == writer.get("writer_id")]
            if not own or own[0].get("seq") != writer.get("first_seq") or own[0].get("prev_hash") != writer.get("first_prev_hash") \
                    or own[-1].get("seq") != writer.get("last_seq") or len(own) != writer.get("events"):
                manifest_problem = _problem("truncated", writer.get("writer_id"), writer.get("first_seq"),
                                            "the events do not span what the signed manifest says")
                break
        if not events:
            manifest_problem = _problem("missing", None, None, "the bundle holds no events")
    # A bad manifest signature puts everything in doubt (reported first, as custos verify does);
    # an extent mismatch matters when the chain itself holds.
    if manifest_problem is not None and (result["problem"] is None or manifest_problem["kind"] == "signature_invalid"):
        result["ok"] = False
        result["problem"] = manifest_problem

    # policies: each version is the SHA-256 of its text; every version a decision names is there
    policy_problems = []
    versions = set()
    policies_path = directory / "policies.jsonl"
    for p in (read_jsonl(policies_path) if policies_path.exists() else []):
        text = p.get("policy")
        if not isinstance(text, str) or sha256_hex(text.encode("utf-8")) != p.get("version"):
            policy_problems.append(f"policies.jsonl: version {str(p.get('version'))[:16]}… is not the SHA-256 of its policy")
        versions.add(p.get("version"))
    named = set()
    for e in events:
        if e.get("payload") is None:
            continue
        try:
            decision = json.loads(e["payload"]).get("decision")
        except (ValueError, AttributeError):
            continue
        if isinstance(decision, dict) and isinstance(decision.get("policy"), str):
            named.add(decision["policy"])
    absent = sorted(named - versions)
    if absent:
        policy_problems.append(f"policies.jsonl lacks policy versions the decisions name: {', '.join(v[:16] for v in absent)}")
    result["policies"] = {"versions": len(versions), "named": len(named), "problems": policy_problems}
    result["manifest"] = manifest
    result["public_key"] = trusted
    if policy_problems and result["problem"] is None:
        result["ok"] = False
        result["problem"] = _problem("modified", None, None, "; ".join(policy_problems))
    return result


def summarize(result: dict) -> str:
    """One line for a test's output."""
    if result["ok"]:
        return f"intact: {result['events']} events, unsigned tail {result['unsigned_tail']}"
    p = result["problem"]
    return f"{p['kind']} at {p['writer_id']}#{p['seq']}: {p['detail']}"


__all__ = ("verify_events", "read_store", "verify_store", "verify_bundle", "event_hash", "checkpoint_message",
           "public_key_from_seed", "public_key_from_file", "signature_valid", "summarize", "KINDS", "GENESIS")
