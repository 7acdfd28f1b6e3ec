import CustosCore
import Foundation
import Logging
import Testing

@testable import CustosStore

@Suite("Event store and writer")
struct EventWriterTests {
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("custos-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    var path: String { directory.appendingPathComponent("events.sqlite").path }

    func append(_ writer: EventWriter, _ draft: EventDraft) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            writer.append(draft) { result in continuation.resume(with: result.mapError { $0 as any Error }) }
        }
    }

    static func session(_ events: SessionEvents) -> [EventDraft] {
        let identity = Identity(subject: "agent-1", email: "a1@example.com", groups: ["agents"], issuer: "http://127.0.0.1:9000", tokenID: "j1", expiresAt: Date())
        let client = SessionEvents.Client(address: "127.0.0.1:5000", database: "appdb", startupUser: "agent", applicationName: "psql")
        let connection = ConnectionTarget(name: "appdb", kind: "postgres", allowGroups: ["agents"])
        let decision = Decision(verdict: .allow, rule: "r", policy: "none")
        return [
            events.open(client: client, identity: identity, connection: connection, decision: decision),
            events.statement(number: 1, action: Action(channel: .simple, text: "SELECT 1"), decision: decision),
            events.result(number: 1, outcome: .init(commandTag: "SELECT 1", rows: 1, durationMicros: 120)),
            events.close(outcome: "closed", reason: nil, sqlstate: nil, statements: 1),
        ]
    }

    @Test("events chain across sessions and across a restart of the writer")
    func chainAcrossRestart() async throws {
        let store = try EventStore(path: path)
        let writerID = try store.writerID(preferred: nil)
        #expect(try store.writerID(preferred: nil) == writerID, "the writer id is stable")
        var writer = try EventWriter(store: store, writerID: writerID, logger: Logger(label: "test"))
        for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
        writer.stop()
        writer = try EventWriter(store: try EventStore(path: path), writerID: writerID, logger: Logger(label: "test"))
        for draft in Self.session(SessionEvents()) { try await append(writer, draft) }
        writer.stop()

        let events = try EventStore(path: path, readOnly: true).events(writerID: writerID)
        #expect(events.map(\.seq) == Array(1...8))
        #expect(events.first?.prevHash == EventChain.genesis)
        for (previous, event) in zip(events, events.dropFirst()) {
            #expect(event.prevHash == previous.hash)
        }
        #expect(events.allSatisfy(EventChain.isSelfConsistent))
    }

    @Test("the session index follows open, statements and close")
    func sessionIndex() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        let events = SessionEvents()
        for draft in Self.session(events) { try await append(writer, draft) }
        writer.stop()
        let sessions = try store.sessions(SessionFilter(identity: "a1@example.com"))
        #expect(sessions.count == 1)
        let session = try #require(sessions.first)
        #expect(session.id == events.sessionID)
        #expect(session.outcome == "closed")
        #expect(session.statementCount == 1)
        #expect(session.groups == ["agents"])
        #expect(session.endedAt != nil)
        #expect(try store.sessions(SessionFilter(identity: "someone-else")).isEmpty)
        #expect(try store.sessions(SessionFilter(connection: "appdb", since: Date().addingTimeInterval(-60))).count == 1)
        #expect(try store.sessions(SessionFilter(until: Date().addingTimeInterval(-3600))).isEmpty)
        let (_, stored) = try #require(try store.session(id: String(events.sessionID.prefix(8))))
        #expect(stored.map(\.kind) == ["session.open", "statement", "result", "session.close"])
    }

    @Test("a failed write fails every event of the batch and leaves no gap in the chain")
    func failureLeavesNoGap() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", logger: Logger(label: "test"))
        let events = SessionEvents()
        let drafts = Self.session(events)
        try await append(writer, drafts[0])
        try await store.database.write { db in try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'disk full'); END") }
        await #expect(throws: RecorderError.self) { try await append(writer, drafts[1]) }
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
        try await append(writer, drafts[1])
        writer.stop()
        #expect(try store.events(writerID: "w").map(\.seq) == [1, 2])
    }

    @Test("lazy events keep their order and are committed with the next prompt commit, or soon after alone")
    func lazyEvents() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        writer.appendLater(drafts[2])  // a result nobody waits for
        try await append(writer, drafts[1])
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open", "result", "statement"])
        writer.appendLater(drafts[3])
        let deadline = Date().addingTimeInterval(5)
        while try store.events(writerID: "w").count < 4, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(try store.events(writerID: "w").last?.kind == "session.close")
        writer.stop()
    }

    @Test("a lazy event whose commit failed is kept and committed once the store takes writes again")
    func lazyEventsSurviveAFailedCommit() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.01, retryDelay: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        try await store.database.write { db in try db.execute(sql: "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'disk full'); END") }
        writer.appendLater(drafts[2])  // a result: the statement ran, so it must not be lost
        await #expect(throws: RecorderError.self) { try await append(writer, drafts[1]) }
        try await Task.sleep(for: .milliseconds(200))  // several retries, all refused
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open"])
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse") }
        // Retried alone after retryDelay, before any prompt commit.
        let deadline = Date().addingTimeInterval(5)
        while try store.events(writerID: "w").count < 2, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        writer.appendLater(drafts[3])
        try await append(writer, drafts[1])
        writer.stop()
        let stored = try store.events(writerID: "w")
        #expect(stored.map(\.kind) == ["session.open", "result", "session.close", "statement"])
        #expect(stored.map(\.seq) == [1, 2, 3, 4])
        #expect(stored.allSatisfy(EventChain.isSelfConsistent))
    }

    @Test("a kept event the store refuses again and again does not hold up the events after it")
    func refusedLazyEventDoesNotBlock() async throws {
        let store = try EventStore(path: path)
        let writer = try EventWriter(store: store, writerID: "w", lazyWindow: 0.01, retryDelay: 0.05, logger: Logger(label: "test"))
        let drafts = Self.session(SessionEvents())
        try await append(writer, drafts[0])
        try await store.database.write { db in
            try db.execute(sql: "CREATE TRIGGER refuse_results BEFORE INSERT ON events WHEN NEW.kind = 'result' BEGIN SELECT RAISE(FAIL, 'no'); END")
        }
        writer.appendLater(drafts[2])
        try await Task.sleep(for: .milliseconds(100))
        try await append(writer, drafts[1])  // committed although the result before it is still refused
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open", "statement"])
        try await store.database.write { db in try db.execute(sql: "DROP TRIGGER refuse_results") }
        let deadline = Date().addingTimeInterval(5)
        while try store.events(writerID: "w").count < 3, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        writer.stop()
        #expect(try store.events(writerID: "w").map(\.kind) == ["session.open", "statement", "result"])
    }

    @Test("appends after stop fail instead of vanishing")
    func appendAfterStop() async throws {
        let writer = try EventWriter(store: try EventStore(path: path), writerID: "w", logger: Logger(label: "test"))
        writer.stop()
        await #expect(throws: RecorderError.self) { try await append(writer, Self.session(SessionEvents())[0]) }
    }
}
