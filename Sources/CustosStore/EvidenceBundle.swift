import CustosCore
import Foundation
import GRDB

/// A folder of evidence that verifies without the store or the configuration
/// (docs/evidence.md, "Evidence bundles").
public enum EvidenceBundle {
    /// What a bundle covers.
    public enum Scope: Sendable {
        case session(String)
        case time(since: Date, until: Date)
    }

    /// A bundle that could not be written or read (as opposed to one that fails verification).
    public struct BundleError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// What an export wrote.
    public struct Summary: Sendable {
        public var events: Int
        public var inScope: Int
        public var checkpoints: Int
        public var policies: Int
        /// Events after the last checkpoint of the range (not covered by a signature yet).
        public var unsigned: Int
    }

    /// Writes the bundle for `scope` into `folder` (created; it must not hold files already). The
    /// manifest, which fixes the bundle's scope and extent, is signed with the checkpoint key.
    public static func export(from store: EventStore, scope: Scope, signer: CheckpointSigner, to folder: String) throws -> Summary {
        let publicKey = signer.publicKey
        let manager = FileManager.default
        if let existing = try? manager.contentsOfDirectory(atPath: folder), !existing.isEmpty {
            throw BundleError("\(folder) is not empty; name a new folder")
        }
        try manager.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var scopeJSON: CanonicalJSON
        let inScope: (Event) -> Bool
        var sessionID: String?
        switch scope {
        case .session(let id):
            guard let (session, _) = try store.session(id: id) else { throw BundleError("no session \(id)") }
            sessionID = session.id
            scopeJSON = ["session": .string(session.id)]
            inScope = { $0.sessionID == session.id }
        case .time(let since, let until):
            let low = Timestamp.format(since)
            let high = Timestamp.format(until)
            scopeJSON = ["since": .string(low), "until": .string(high)]
            inScope = { $0.at >= low && $0.at <= high }
        }
        var summary = Summary(events: 0, inScope: 0, checkpoints: 0, policies: 0, unsigned: 0)
        var events = ""
        var checkpointLines = ""
        var versions = Set<String>()
        var writers: [CanonicalJSON] = []
        for writerID in try store.writers() {
            let bounds: ClosedRange<Int64>?
            switch scope {
            case .session: bounds = try store.seqBounds(writerID: writerID, session: sessionID!)
            case .time(let since, let until): bounds = try store.seqBounds(writerID: writerID, since: since, until: until)
            }
            guard let bounds else { continue }
            // Up to the first checkpoint at or after the last event in scope, so that a signature covers it.
            let checkpoints = try store.checkpoints(writerID: writerID)
            let chainEnd = try store.seqBounds(writerID: writerID)?.upperBound ?? bounds.upperBound
            let end = checkpoints.first { $0.seq >= bounds.upperBound }?.seq ?? chainEnd
            var last = bounds.lowerBound
            var firstPrevHash: String?
            var counts = (events: 0, inScope: 0, pruned: 0)
            try store.forEachEvent(writerID: writerID, in: bounds.lowerBound...end) { event, _ in
                var event = event
                if firstPrevHash == nil { firstPrevHash = event.prevHash }
                if inScope(event) {
                    counts.inScope += 1
                    if event.payload == nil { counts.pruned += 1 }
                    if let version = Self.policyVersion(event) { versions.insert(version) }
                } else {
                    event.payload = nil
                }
                events += event.line + "\n"
                counts.events += 1
                last = event.seq
            }
            summary.events += counts.events
            summary.inScope += counts.inScope
            let signed = checkpoints.filter { (bounds.lowerBound...end).contains($0.seq) }
            for checkpoint in signed { checkpointLines += checkpoint.line + "\n" }
            summary.checkpoints += signed.count
            summary.unsigned += Int(last - (signed.last?.seq ?? bounds.lowerBound - 1))
            writers.append([
                "writer_id": .string(writerID), "first_seq": .int(bounds.lowerBound), "first_prev_hash": .optional(firstPrevHash), "last_seq": .int(last),
                "events": .int(Int64(counts.events)), "in_scope": .int(Int64(counts.inScope)), "pruned_in_scope": .int(Int64(counts.pruned)),
            ])
        }
        var policyLines = ""
        for (version, body) in try store.policies(versions: versions) {
            let line: CanonicalJSON = ["version": .string(version), "policy": .string(body)]
            policyLines += line.text + "\n"
            summary.policies += 1
        }
        let manifest: CanonicalJSON = [
            "format": "custos.bundle.v1", "created_at": .string(Timestamp.format(Date())), "scope": scopeJSON, "writers": .array(writers),
            "events": .int(Int64(summary.events)), "in_scope": .int(Int64(summary.inScope)), "public_key": .string(publicKey),
        ]
        let manifestText = manifest.text + "\n"
        let files: [(String, String)] = [
            ("events.jsonl", events), ("checkpoints.jsonl", checkpointLines), ("public-key.txt", publicKey + "\n"),
            ("policies.jsonl", policyLines), ("manifest.json", manifestText),
            ("manifest.sig", try signer.signature(over: Array(manifestText.utf8)) + "\n"), ("README.md", Self.readme(publicKey: publicKey)),
        ]
        for (name, text) in files {
            try Data(text.utf8).write(to: URL(fileURLWithPath: folder).appendingPathComponent(name))
        }
        return summary
    }

    /// The policy version a statement or session decision names.
    static func policyVersion(_ event: Event) -> String? {
        guard let payload = event.payload, payload.contains("\"policy\""),
            let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any],
            let decision = object["decision"] as? [String: Any]
        else { return nil }
        return decision["policy"] as? String
    }

    /// Verifies the bundle in `folder`, trusting `trustedKey` (hex) or else the bundle's own key.
    public static func verify(folder: String, trustedKey: String? = nil) throws -> VerificationResult {
        let base = URL(fileURLWithPath: folder)
        func read(_ name: String) throws -> String {
            do {
                return try String(contentsOf: base.appendingPathComponent(name), encoding: .utf8)
            } catch {
                throw BundleError("\(folder) is not a bundle: cannot read \(name)")
            }
        }
        let bundleKey = try read("public-key.txt").trimmingCharacters(in: .whitespacesAndNewlines)
        let key = trustedKey ?? bundleKey
        let decoder = JSONDecoder()
        var byWriter: [(String, [Event])] = []
        var unreadable: ChainProblem?
        for (number, line) in try read("events.jsonl").split(separator: "\n").enumerated() {
            guard let event = try? decoder.decode(Event.self, from: Data(line.utf8)) else {
                let writer = byWriter.last?.0 ?? "?"
                unreadable = unreadable ?? ChainProblem(
                    kind: .modified, writerID: writer, seq: (byWriter.last?.1.last?.seq ?? 0) &+ 1, detail: "events.jsonl line \(number + 1) is not an event")
                continue
            }
            if let index = byWriter.firstIndex(where: { $0.0 == event.writerID }) {
                byWriter[index].1.append(event)
            } else {
                byWriter.append((event.writerID, [event]))
            }
        }
        var checkpoints: [Checkpoint] = []
        for line in try read("checkpoints.jsonl").split(separator: "\n") {
            guard let checkpoint = try? decoder.decode(Checkpoint.self, from: Data(line.utf8)) else {
                unreadable = unreadable ?? ChainProblem(kind: .signatureInvalid, writerID: "?", seq: 0, detail: "checkpoints.jsonl holds a line that is not a checkpoint")
                continue
            }
            checkpoints.append(checkpoint)
        }
        // The manifest fixes scope and extent; it is signed, so a bundle cannot be trimmed or re-scoped.
        let manifestText = try read("manifest.json")
        let manifestSignature = try read("manifest.sig").trimmingCharacters(in: .whitespacesAndNewlines)
        var other = unreadable
        let manifest = (try? JSONSerialization.jsonObject(with: Data(manifestText.utf8))) as? [String: Any] ?? [:]
        if !CheckpointSigner.isValid(signature: manifestSignature, over: Array(manifestText.utf8), key: key) {
            other = other ?? ChainProblem(kind: .signatureInvalid, writerID: "manifest.json", seq: 0, detail: "the manifest's signature does not verify under the trusted key")
        }
        let scope = manifest["scope"] as? [String: Any] ?? [:]
        let inScope: (Event) -> Bool
        if let session = scope["session"] as? String {
            inScope = { $0.sessionID == session }
        } else if let since = scope["since"] as? String, let until = scope["until"] as? String {
            inScope = { $0.at >= since && $0.at <= until }
        } else {
            inScope = { _ in false }
            other = other ?? ChainProblem(kind: .modified, writerID: "manifest.json", seq: 0, detail: "the manifest names no scope")
        }
        let declared = manifest["writers"] as? [[String: Any]] ?? []
        if declared.isEmpty || byWriter.isEmpty {
            other = other ?? ChainProblem(kind: .missing, writerID: "events.jsonl", seq: 0, detail: "the bundle holds no events")
        }
        var reports: [ChainReport] = []
        for writer in declared {
            guard let writerID = writer["writer_id"] as? String, let firstSeq = (writer["first_seq"] as? NSNumber)?.int64Value,
                let lastSeq = (writer["last_seq"] as? NSNumber)?.int64Value, let firstPrev = writer["first_prev_hash"] as? String
            else {
                other = other ?? ChainProblem(kind: .modified, writerID: "manifest.json", seq: 0, detail: "the manifest describes a writer incompletely")
                continue
            }
            let events = byWriter.first { $0.0 == writerID }?.1 ?? []
            let seqs = events.map(\.seq)
            let positions = Dictionary(events.map { ($0.hash, $0.seq) }, uniquingKeysWith: { first, _ in first })
            var verifier = ChainVerifier(
                writerID: writerID, trustedKey: key, checkpoints: checkpoints.filter { $0.writerID == writerID }, source: .bundle,
                start: (firstSeq, firstPrev), present: Set(seqs), seqRange: (seqs.min() ?? firstSeq)...max(seqs.max() ?? firstSeq, seqs.min() ?? firstSeq))
            for event in events { verifier.feed(event) { positions[$0] } }
            var report = verifier.finish(tail: true)
            if report.problem == nil, (report.lastSeq ?? firstSeq - 1) < lastSeq {
                let next = (report.lastSeq ?? firstSeq - 1) + 1
                report.problem = ChainProblem(kind: .truncated, writerID: writerID, seq: next, detail: "the manifest says the bundle runs to seq \(lastSeq)")
            }
            if report.problem == nil {
                // Every event in scope keeps its payload, but for those retention removed before the export.
                let scoped = events.filter(inScope)
                let withheld = scoped.filter { $0.payload == nil }
                let pruned = (writer["pruned_in_scope"] as? NSNumber)?.intValue ?? 0
                if scoped.count != (writer["in_scope"] as? NSNumber)?.intValue ?? -1 || withheld.count > pruned {
                    let first = withheld.first
                    report.problem = ChainProblem(
                        kind: .modified, writerID: writerID, seq: first?.seq ?? firstSeq, sessionID: first?.sessionID,
                        detail: "the events in scope do not match the manifest (a payload in scope is missing)")
                }
            }
            reports.append(report)
        }
        for (writerID, events) in byWriter where !declared.contains(where: { $0["writer_id"] as? String == writerID }) {
            other = other ?? ChainProblem(kind: .modified, writerID: writerID, seq: events.first?.seq ?? 0, detail: "events of a writer the manifest does not name")
        }
        for checkpoint in checkpoints where !byWriter.contains(where: { $0.0 == checkpoint.writerID }) {
            other = other ?? ChainProblem(kind: .truncated, writerID: checkpoint.writerID, seq: checkpoint.seq, detail: "a checkpoint of a writer with no events")
        }
        for line in try read("policies.jsonl").split(separator: "\n") where other == nil {
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any], let version = object["version"] as? String,
                let policy = object["policy"] as? String, EventChain.sha256Hex(policy.utf8) == version
            else {
                other = ChainProblem(kind: .modified, writerID: "policies.jsonl", seq: 0, detail: "a policy does not match its version hash")
                break
            }
        }
        return VerificationResult(writers: reports, other: other)
    }

    static func readme(publicKey: String) -> String {
        """
        # Custos evidence bundle

        This folder holds hash-chained events recorded by a Custos gateway, the signed checkpoints
        that cover them, the signing public key and the policies the recorded decisions name.

        Verify it, with no access to the gateway, its store or its configuration:

            custos verify --bundle . --public-key \(publicKey)

        Compare that public key with one obtained independently (the gateway's
        `GET /api/v1/evidence/key`, or the copy taken when the key was created): a bundle's own
        `public-key.txt` only shows that the bundle agrees with itself.
        `manifest.json` (signed in `manifest.sig` with the same key) fixes what the bundle covers.

        Without Custos, the format is defined in docs/evidence.md of the Custos sources:
        `events.jsonl` holds one event per line in chain order (`payload` is null for events of
        other sessions, kept only so that the chain links), `checkpoints.jsonl` the Ed25519
        signatures over chain heads, `policies.jsonl` each policy's canonical text (its version is
        the SHA-256 of that text), and `manifest.json` the scope of the export.

        """
    }
}

extension EventStore {
    /// The lowest and highest `seq` of one session's events under a writer.
    public func seqBounds(writerID: String, session: String) throws -> ClosedRange<Int64>? {
        try database.read { db in
            let row = try Row.fetchOne(
                db, sql: "SELECT min(seq) AS low, max(seq) AS high FROM events WHERE writer_id = ? AND session_id = ? AND typeof(seq) = 'integer'",
                arguments: [writerID, session])
            guard let low: Int64 = row?["low"], let high: Int64 = row?["high"] else { return nil }
            return low...high
        }
    }
}
