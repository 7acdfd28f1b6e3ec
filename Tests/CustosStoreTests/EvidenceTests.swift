import CustosCore
import Foundation
import GRDB
import Logging
import Testing

@testable import CustosStore

@Suite("Evidence: checkpoints, verification, bundles, retention, search")
struct EvidenceTests {
    let directory: URL
    let signer: CheckpointSigner

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("custos-evidence-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        signer = try CheckpointSigner(seed: Array(repeating: 7, count: 32))
    }

    var path: String { directory.appendingPathComponent("events.sqlite").path }

    func append(_ writer: EventWriter, _ draft: EventDraft) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            writer.append(draft) { result in continuation.resume(with: result.mapError { $0 as any Error }) }
        }
    }

    /// A session: open, one statement (with its tables and verdict), its result, close.
    static func session(_ events: SessionEvents, subject: String, text: String, tables: [String], verdict: Decision.Verdict) -> [EventDraft] {
        let identity = Identity(subject: subject, email: "\(subject)@example.com", groups: ["agents"], issuer: "http://127.0.0.1:9000", tokenID: "j", expiresAt: Date())
        let client = SessionEvents.Client(address: "127.0.0.1:5000", database: "appdb", startupUser: "agent", applicationName: "psql")
        let connection = ConnectionTarget(name: "appdb", kind: "postgres", allowGroups: ["agents"])
        let info = StatementInfo(kind: "select", tablesRead: tables, readOnly: true, text: text)
        return [
            events.open(client: client, identity: identity, connection: connection, decision: Decision(verdict: .allow, rule: "r", policy: "p1")),
            events.statement(number: 1, action: Action(channel: .simple, text: text, statements: [info]), decision: Decision(verdict: verdict, rule: "r", policy: "p1")),
            events.result(number: 1, outcome: .init(commandTag: "SELECT 1", rows: 1, durationMicros: 120)),
            events.close(outcome: "closed", reason: nil, sqlstate: nil, statements: 1),
        ]
    }

    /// Records three sessions (12 events) with a checkpoint every 5 events and one at stop.
    func record() async throws -> (store: EventStore, writerID: String, sessions: [String]) {
        let store = try EventStore(path: path)
        let writerID = try store.writerID(preferred: "gw-test")
        let writer = try EventWriter(store: store, writerID: writerID, signer: signer, checkpointEvery: 5, logger: Logger(label: "test"))
        var sessions: [String] = []
        for (subject, text, tables, verdict) in [
            ("alice", "SELECT email FROM customers", ["public.customers"], Decision.Verdict.allow),
            ("bob", "DELETE FROM orders", ["orders"], .deny),
            ("carol", "SELECT total FROM invoices", ["billing.invoices"], .review),
        ] {
            let events = SessionEvents()
            sessions.append(events.sessionID)
            for draft in Self.session(events, subject: subject, text: text, tables: tables, verdict: verdict) { try await append(writer, draft) }
        }
        writer.stop()
        return (store, writerID, sessions)
    }

    func mutate(_ store: EventStore, _ sql: String, _ arguments: StatementArguments = []) throws {
        try store.database.write { try $0.execute(sql: sql, arguments: arguments) }
    }

    @Test("the writer signs its head every N events and at stop; an untouched store verifies")
    func checkpoints() async throws {
        let (store, writerID, _) = try await record()
        let checkpoints = try store.checkpoints(writerID: writerID)
        #expect(checkpoints.map(\.seq) == [5, 10, 12])
        #expect(checkpoints.allSatisfy { $0.isValid(trustedKey: signer.publicKey) })
        let result = try store.verify(trustedKey: signer.publicKey)
        #expect(result.problem == nil)
        #expect(result.writers.first?.signedThrough == 12)
        #expect(result.unsignedTail == 0)
        #expect(result.writers.first?.checkpoints == 3)
    }

    @Test("each single mutation is named with its kind and the first bad seq")
    func mutations() async throws {
        let cases: [(String, StatementArguments, ChainProblem.Kind, Int64)] = [
            ("UPDATE events SET payload = replace(payload, 'customers', 'custumers') WHERE seq = 2", [], .modified, 2),
            ("UPDATE events SET hash = ? WHERE seq = 3", [String(repeating: "a", count: 64)], .modified, 3),
            ("UPDATE events SET prev_hash = ? WHERE seq = 7", [String(repeating: "b", count: 64)], .modified, 7),
            ("UPDATE events SET payload = NULL WHERE seq = 6", [], .modified, 6),
            ("DELETE FROM events WHERE seq = 8", [], .missing, 8),
            ("UPDATE events SET seq = -1 WHERE seq = 4; UPDATE events SET seq = 4 WHERE seq = 9; UPDATE events SET seq = 9 WHERE seq = -1", [], .reordered, 4),
            ("DELETE FROM events WHERE seq > 9", [], .truncated, 10),
            ("UPDATE checkpoints SET signature = ? WHERE seq = 10", [String(repeating: "c", count: 128)], .signatureInvalid, 10),
        ]
        for (sql, arguments, kind, seq) in cases {
            let copy = directory.appendingPathComponent("copy-\(UUID().uuidString).sqlite").path
            try? FileManager.default.removeItem(atPath: path)
            let (store, _, _) = try await record()
            try store.close()
            try FileManager.default.copyItem(atPath: path, toPath: copy)
            let mutated = try EventStore(path: copy)
            try mutate(mutated, sql, arguments)
            let problem = try mutated.verify(trustedKey: signer.publicKey).problem
            #expect(problem?.kind == kind, "\(sql)")
            #expect(problem?.seq == seq, "\(sql): \(problem?.detail ?? "no problem")")
        }
    }

    @Test("another key's checkpoints are refused; a rewritten chain contradicts its checkpoint")
    func keysAndRewrites() async throws {
        let (store, writerID, _) = try await record()
        let other = try CheckpointSigner(seed: Array(repeating: 9, count: 32))
        #expect(try store.verify(trustedKey: other.publicKey).problem?.kind == .signatureInvalid)
        // Rewrite event 2 and recompute every hash after it: links hold, the checkpoint at 5 does not.
        var events = try store.events(writerID: writerID)
        events[1].payload = events[1].payload!.replacingOccurrences(of: "customers", with: "vendors")
        var previous = events[0].hash
        for index in 1..<events.count {
            events[index].payloadHash = EventChain.sha256Hex(events[index].payload!.utf8)
            events[index].prevHash = previous
            events[index].hash = EventChain.eventHash(events[index], seq: events[index].seq)
            previous = events[index].hash
        }
        for event in events.dropFirst() {
            try mutate(
                store, "UPDATE events SET payload = ?, payload_hash = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                [event.payload, event.payloadHash, event.prevHash, event.hash, event.seq])
        }
        let problem = try store.verify(trustedKey: signer.publicKey).problem
        #expect(problem?.kind == .modified)
        #expect(problem?.seq == 5)
    }

    @Test("a time range is checked from the event before it; truncation only without --until")
    func timeRange() async throws {
        let (store, _, _) = try await record()
        let result = try store.verify(trustedKey: signer.publicKey, since: Date().addingTimeInterval(-60), until: Date().addingTimeInterval(60))
        #expect(result.problem == nil)
        #expect(result.writers.first?.events == 12)
        #expect(try store.verify(trustedKey: signer.publicKey, since: Date().addingTimeInterval(60)).writers.first?.events == 0)
    }

    @Test("search by decision, text and table finds exactly the sessions that match")
    func search() async throws {
        let (store, _, sessions) = try await record()
        func ids(_ filter: SessionFilter) throws -> Set<String> { Set(try store.sessions(filter).map(\.id)) }
        #expect(try ids(SessionFilter(decision: .deny)) == [sessions[1]])
        #expect(try ids(SessionFilter(decision: .review)) == [sessions[2]])
        #expect(try ids(SessionFilter(text: "email customers")) == [sessions[0]])
        #expect(try ids(SessionFilter(text: "EMAIL")) == [sessions[0]])
        #expect(try ids(SessionFilter(text: "email orders")).isEmpty)
        #expect(try ids(SessionFilter(text: #"" OR * NEAR("#)).isEmpty, "FTS syntax in words is quoted, not run")
        #expect(try ids(SessionFilter(table: "customers")) == [sessions[0]])
        #expect(try ids(SessionFilter(table: "public.customers")) == [sessions[0]])
        #expect(try ids(SessionFilter(table: "INVOICES")) == [sessions[2]])
        #expect(try ids(SessionFilter(table: "other.invoices")).isEmpty)
        #expect(try ids(SessionFilter(table: "voices")).isEmpty, "a suffix matches only after a dot")
        #expect(try ids(SessionFilter(identity: "bob", decision: .allow)).isEmpty)
    }

    @Test("retention removes payloads only behind a recorded retention event; verify still passes")
    func retention() async throws {
        let (store, writerID, sessions) = try await record()
        try await Task.sleep(for: .milliseconds(5))
        let before = Timestamp.format(Date())
        // A removal no retention event announced is tampering.
        try mutate(store, "UPDATE events SET payload = NULL WHERE seq = 2")
        #expect(try store.verify(trustedKey: signer.publicKey).problem?.kind == .modified)

        let writer = try EventWriter(store: store, writerID: writerID, signer: signer, checkpointEvery: 5, logger: Logger(label: "test"))
        try await append(writer, EventDraft(kind: .retention, sessionID: "gateway", payload: ["before": .string(before), "through_seq": .int(12)]))
        writer.stop()
        let removed = try store.prune(writerID: writerID, before: before, throughSeq: 12)
        #expect(removed == 11, "every payload but the one already gone")
        let result = try store.verify(trustedKey: signer.publicKey)
        #expect(result.problem == nil, "\(String(describing: result.problem))")
        #expect(result.writers.first?.pruned == 12)
        #expect(try store.sessions(SessionFilter(text: "customers")).isEmpty, "pruned text leaves the search index")
        #expect(try store.sessions(SessionFilter()).count == 3, "session summaries stay")
        #expect(try store.session(id: sessions[0])?.1.allSatisfy { $0.payload == nil } == true)
    }

    @Test("a session's bundle verifies offline, withholds other sessions, and fails when modified")
    func bundles() async throws {
        let (store, _, sessions) = try await record()
        try store.savePolicy(Policy(rules: []))
        let folder = directory.appendingPathComponent("bundle").path
        let summary = try EvidenceBundle.export(from: store, scope: .session(sessions[1]), signer: signer, to: folder)
        #expect(summary.inScope == 4)
        #expect(summary.events == 6, "seq 5 to the checkpoint at 10")
        #expect(summary.unsigned == 0)
        #expect(try EvidenceBundle.verify(folder: folder).problem == nil)
        let eventsFile = URL(fileURLWithPath: folder).appendingPathComponent("events.jsonl")
        let text = try String(contentsOf: eventsFile, encoding: .utf8)
        #expect(!text.contains("customers") && !text.contains("invoices"), "other sessions' content stays out")
        #expect(text.contains("DELETE FROM orders"))
        #expect(throws: EvidenceBundle.BundleError.self) { try EvidenceBundle.export(from: store, scope: .session(sessions[0]), signer: signer, to: folder) }

        try text.replacingOccurrences(of: "DELETE FROM orders", with: "DELETE FROM ordure").write(to: eventsFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem?.kind == .modified)
        var lines = text.split(separator: "\n")
        lines.swapAt(1, 2)
        try (lines.joined(separator: "\n") + "\n").write(to: eventsFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem?.kind == .reordered)
        try text.write(to: eventsFile, atomically: true, encoding: .utf8)
        let other = try CheckpointSigner(seed: Array(repeating: 9, count: 32))
        #expect(try EvidenceBundle.verify(folder: folder, trustedKey: other.publicKey).problem?.kind == .signatureInvalid)

        // Trimmed or re-scoped bundles fail: the signed manifest fixes the extent and the scope.
        try (lines.dropFirst().joined(separator: "\n") + "\n").write(to: eventsFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem?.kind == .missing)
        try "".write(to: eventsFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem != nil, "an empty bundle is not intact")
        let ordered = text.split(separator: "\n")
        try (ordered.dropLast(2).joined(separator: "\n") + "\n").write(to: eventsFile, atomically: true, encoding: .utf8)
        let checkpointsFile = URL(fileURLWithPath: folder).appendingPathComponent("checkpoints.jsonl")
        try "".write(to: checkpointsFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem?.kind == .truncated)
        try text.write(to: eventsFile, atomically: true, encoding: .utf8)
        let manifestFile = URL(fileURLWithPath: folder).appendingPathComponent("manifest.json")
        let manifest = try String(contentsOf: manifestFile, encoding: .utf8)
        try manifest.replacingOccurrences(of: sessions[1], with: sessions[0]).write(to: manifestFile, atomically: true, encoding: .utf8)
        #expect(try EvidenceBundle.verify(folder: folder).problem?.kind == .signatureInvalid)
    }

    @Test("a restart resumes only a chain that still holds its signed head and verifies after it")
    func resume() async throws {
        let (store, writerID, _) = try await record()
        let key = signer.publicKey
        let head = try store.checkpoints(writerID: writerID).last!
        let clean = try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: (head.seq, head.hash), retention: nil)
        #expect(try clean.get().unsigned == nil)

        // A crash tail (events after the last checkpoint) is resumable and reported.
        try mutate(store, "DELETE FROM checkpoints WHERE seq = 12")
        let crashed = try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: (10, try store.eventHash(writerID: writerID, seq: 10)!), retention: nil)
        #expect(try crashed.get().unsigned == 11...12)

        // Checkpoints deleted behind the anchor: refused.
        try mutate(store, "DELETE FROM checkpoints WHERE seq = 10")
        let lost = try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: (head.seq, head.hash), retention: nil)
        #expect(throws: ChainProblem.self) { try lost.get() }

        // A bad tail, or a retention event the configuration would not have written: refused.
        try mutate(store, "UPDATE events SET hash = 'x' WHERE seq = 8")
        #expect(throws: ChainProblem.self) { try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: nil, retention: nil).get() }
        try mutate(store, "UPDATE events SET hash = ? WHERE seq = 8", [try store.events(writerID: writerID)[7].prevHash == "" ? "" : EventChain.eventHash(try store.events(writerID: writerID)[7], seq: 8)])
        let writer = try EventWriter(store: store, writerID: writerID, logger: Logger(label: "test"))
        try await append(writer, EventDraft(kind: .retention, sessionID: "gateway", payload: ["before": .string(Timestamp.format(Date())), "through_seq": .int(12)]))
        writer.stop()
        #expect(throws: ChainProblem.self) { try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: nil, retention: nil).get() }
        #expect(throws: ChainProblem.self) { try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: nil, retention: 86400).get() }
        #expect(try store.resumeCheck(writerID: writerID, trustedKey: key, anchor: nil, retention: 0.001).get().unsigned == 6...13)
    }

    @Test("hostile seq values are reported, never trapped on or searched for ever")
    func hostileSeqs() async throws {
        let (store, _, _) = try await record()
        try mutate(store, "UPDATE events SET seq = 9223372036854775807 WHERE seq = 12")
        #expect(try store.verify(trustedKey: signer.publicKey).problem?.seq == 12)
        try mutate(store, "UPDATE events SET seq = 1000000000000 WHERE seq = 9223372036854775807")
        try mutate(store, "UPDATE events SET hash = 'x' WHERE seq = 1000000000000")
        #expect(try store.verify(trustedKey: signer.publicKey).problem?.seq == 12)
        try mutate(store, "UPDATE events SET seq = 'twelve' WHERE seq = 1000000000000")
        #expect(try store.verify(trustedKey: signer.publicKey).problem != nil)
        try mutate(store, "UPDATE events SET seq = -5 WHERE seq = 'twelve'")
        #expect(try store.verify(trustedKey: signer.publicKey).problem?.kind == .modified)
    }
}
