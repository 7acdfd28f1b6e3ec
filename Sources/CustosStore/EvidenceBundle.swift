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

    /// Writes the bundle for `scope` into `folder` (created; it must not hold files already).
    public static func export(from store: EventStore, scope: Scope, publicKey: String, to folder: String) throws -> Summary {
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
            try store.forEachEvent(writerID: writerID, in: bounds.lowerBound...end) { event in
                var event = event
                if inScope(event) {
                    summary.inScope += 1
                    if let version = Self.policyVersion(event) { versions.insert(version) }
                } else {
                    event.payload = nil
                }
                events += event.line + "\n"
                summary.events += 1
                last = event.seq
            }
            let signed = checkpoints.filter { (bounds.lowerBound...end).contains($0.seq) }
            for checkpoint in signed { checkpointLines += checkpoint.line + "\n" }
            summary.checkpoints += signed.count
            summary.unsigned += Int(last - (signed.last?.seq ?? bounds.lowerBound - 1))
            writers.append(["writer_id": .string(writerID), "first_seq": .int(bounds.lowerBound), "last_seq": .int(last)])
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
        let files: [(String, String)] = [
            ("events.jsonl", events), ("checkpoints.jsonl", checkpointLines), ("public-key.txt", publicKey + "\n"),
            ("policies.jsonl", policyLines), ("manifest.json", manifest.text + "\n"), ("README.md", Self.readme(publicKey: publicKey)),
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
                    kind: .modified, writerID: writer, seq: (byWriter.last?.1.last?.seq ?? 0) + 1, detail: "events.jsonl line \(number + 1) is not an event")
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
        let manifest = (try? JSONSerialization.jsonObject(with: Data(try read("manifest.json").utf8))) as? [String: Any] ?? [:]
        let scopeSession = (manifest["scope"] as? [String: Any])?["session"] as? String
        var reports: [ChainReport] = []
        for (writerID, events) in byWriter {
            let seqs = events.map(\.seq)
            var verifier = ChainVerifier(
                writerID: writerID, trustedKey: key, checkpoints: checkpoints.filter { $0.writerID == writerID }, source: .bundle, start: nil,
                present: Set(seqs), seqRange: seqs.min()!...seqs.max()!)
            for event in events { verifier.feed(event) }
            var report = verifier.finish(tail: true)
            // A bundle made for one session must carry all of that session's payloads.
            if report.problem == nil, let scopeSession, let withheld = events.first(where: { $0.sessionID == scopeSession && $0.payload == nil }) {
                report.problem = ChainProblem(
                    kind: .modified, writerID: writerID, seq: withheld.seq, sessionID: scopeSession, detail: "the payload of an event in scope is missing")
            }
            reports.append(report)
        }
        var other = unreadable
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
                db, sql: "SELECT min(seq) AS low, max(seq) AS high FROM events WHERE writer_id = ? AND session_id = ?", arguments: [writerID, session])
            guard let low: Int64 = row?["low"], let high: Int64 = row?["high"] else { return nil }
            return low...high
        }
    }
}
