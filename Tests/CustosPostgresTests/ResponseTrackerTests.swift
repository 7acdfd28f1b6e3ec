import NIOCore
import Testing

@testable import CustosPostgres

@Suite("Response tracker")
struct ResponseTrackerTests {
    typealias Statement = ResponseTracker.Statement

    static func frame(_ message: BackendMessage) -> PostgresFrame {
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        return try! CodecTests.backendDecoder.decodeFrame(&buffer)!
    }

    static func feed(_ tracker: inout ResponseTracker, _ messages: [BackendMessage]) -> [ResponseTracker.Effect] {
        var effects: [ResponseTracker.Effect] = []
        for message in messages { tracker.received(message.type, frame: frame(message), effects: &effects) }
        return effects
    }

    @Test("a simple query collects rows and its tag, finishing at ReadyForQuery")
    func simpleQuery() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        tracker.expect(.query(Statement(number: 1, startedAt: 1)), effects: &effects)
        let cols = [BackendMessage.Column(name: "a", tableOID: 0, attribute: 0, typeOID: 23, typeSize: 4, typeModifier: -1, format: 0)]
        effects = Self.feed(&tracker, [.rowDescription(cols), .dataRow([nil]), .dataRow([nil]), .commandComplete(tag: "SELECT 2")])
        #expect(effects.isEmpty)
        effects = Self.feed(&tracker, [.readyForQuery(.inTransaction)])
        #expect(effects == [.finished(Statement(number: 1, startedAt: 1, rows: 2, commandTag: "SELECT 2"))])
        #expect(tracker.isIdle)
        #expect(tracker.transactionStatus == .inTransaction)
    }

    @Test("pipelined executes are attributed in order")
    func pipeline() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        for expectation in [ResponseTracker.Expectation.parse(""), .bind(""), .execute(Statement(number: 1, startedAt: 1)), .bind(""),
            .execute(Statement(number: 2, startedAt: 2)), .sync]
        {
            tracker.expect(expectation, effects: &effects)
        }
        effects = Self.feed(
            &tracker,
            [.parseComplete, .bindComplete, .dataRow([nil]), .commandComplete(tag: "SELECT 1"), .bindComplete, .commandComplete(tag: "UPDATE 3"),
                .readyForQuery(.idle)])
        #expect(
            effects == [
                .finished(Statement(number: 1, startedAt: 1, rows: 1, commandTag: "SELECT 1")),
                .finished(Statement(number: 2, startedAt: 2, rows: 0, commandTag: "UPDATE 3")),
            ])
        #expect(tracker.isIdle)
    }

    @Test("an error skips to Sync: the failing execute gets the error, later ones are marked not executed")
    func errorSkipsToSync() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        for expectation in [ResponseTracker.Expectation.parse(""), .bind(""), .execute(Statement(number: 1, startedAt: 1)), .bind(""),
            .execute(Statement(number: 2, startedAt: 2)), .sync]
        {
            tracker.expect(expectation, effects: &effects)
        }
        let error = ErrorFields(severity: "ERROR", sqlstate: "22012", message: "division by zero")
        effects = Self.feed(&tracker, [.parseComplete, .bindComplete, .errorResponse(error), .readyForQuery(.idle)])
        // The skipped second Bind never created its portal.
        #expect(effects.contains(.notCreated(statement: nil, portal: "")))
        effects.removeAll { if case .notCreated = $0 { true } else { false } }
        #expect(effects.count == 2)
        guard case .finished(let first) = effects[0], case .finished(let second) = effects[1] else {
            Issue.record("expected two finished statements")
            return
        }
        #expect(first.number == 1 && first.error == error)
        #expect(second.number == 2 && second.error?.message?.hasPrefix("not executed") == true)
        #expect(tracker.isIdle)
    }

    @Test("a refusal is emitted only after the responses due before it")
    func refusalOrdering() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        let refusal = ErrorFields(severity: "ERROR", sqlstate: "42501", message: "denied")
        tracker.expect(.parse(""), effects: &effects)
        tracker.expect(.bind(""), effects: &effects)
        tracker.expect(.refusal(refusal, readyForQuery: false), effects: &effects)
        tracker.expect(.sync, effects: &effects)
        #expect(effects.isEmpty)
        effects = Self.feed(&tracker, [.parseComplete])
        #expect(effects.isEmpty)
        effects = Self.feed(&tracker, [.bindComplete])
        #expect(effects == [.emit(refusal, readyForQuery: nil)])
        effects = Self.feed(&tracker, [.readyForQuery(.idle)])
        #expect(effects.isEmpty && tracker.isIdle)
    }

    @Test("a simple-protocol refusal with nothing pending is emitted at once with ReadyForQuery")
    func immediateRefusal() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        _ = Self.feed(&tracker, [.readyForQuery(.inTransaction)])
        let refusal = ErrorFields(severity: "ERROR", sqlstate: "58030", message: "store down")
        tracker.expect(.refusal(refusal, readyForQuery: true), effects: &effects)
        #expect(effects == [.emit(refusal, readyForQuery: .inTransaction)])
    }

    @Test("notices and notifications between results change nothing")
    func asynchronousMessages() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        tracker.expect(.query(Statement(number: 1, startedAt: 1)), effects: &effects)
        effects = Self.feed(
            &tracker,
            [.noticeResponse(ErrorFields([(UInt8(ascii: "M"), "hi")])), .notification(processID: 1, channel: "c", payload: ""),
                .parameterStatus(name: "TimeZone", value: "UTC"), .commandComplete(tag: "LISTEN"), .readyForQuery(.idle)])
        #expect(effects == [.finished(Statement(number: 1, startedAt: 1, rows: 0, commandTag: "LISTEN"))])
    }
}

extension ResponseTrackerTests {
    @Test("an Execute forwarded after its Bind already failed carries the Bind's error")
    func bindErrorBeforeExecute() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        tracker.expect(.parse(""), effects: &effects)
        tracker.expect(.bind(""), effects: &effects)
        let error = ErrorFields(severity: "ERROR", sqlstate: "22012", message: "division by zero")
        effects = Self.feed(&tracker, [.parseComplete, .errorResponse(error)])
        #expect(effects == [.notCreated(statement: nil, portal: "")], "the failed Bind created no portal")
        effects = []
        // The Execute was held for its write-ahead commit and is forwarded only now.
        tracker.expect(.execute(Statement(number: 1, startedAt: 1)), effects: &effects)
        tracker.expect(.execute(Statement(number: 2, startedAt: 2)), effects: &effects)
        tracker.expect(.sync, effects: &effects)
        effects = Self.feed(&tracker, [.readyForQuery(.idle)])
        #expect(effects.count == 2)
        guard case .finished(let first) = effects.first, case .finished(let second) = effects.last else {
            Issue.record("expected finished statements")
            return
        }
        #expect(first.error == error)
        #expect(second.error?.message?.hasPrefix("not executed") == true)
        // The next sync group starts clean.
        tracker.expect(.execute(Statement(number: 3, startedAt: 3)), effects: &effects)
        tracker.expect(.sync, effects: &effects)
        effects = Self.feed(&tracker, [.readyForQuery(.idle)])
        guard case .finished(let third) = effects.first else {
            Issue.record("expected a finished statement")
            return
        }
        #expect(third.error?.sqlstate == "08P01")
    }
}

extension ResponseTrackerTests {
    @Test("a COMMIT sent as ROLLBACK answers the Execute with the backend's tag and swallows the extra ReadyForQuery")
    func rollbackForCommit() {
        var tracker = ResponseTracker()
        var effects: [ResponseTracker.Effect] = []
        tracker.expect(.parse(""), effects: &effects)
        tracker.expect(.bind(""), effects: &effects)
        tracker.expect(.rollbackForCommit(Statement(number: 9, startedAt: 1)), effects: &effects)
        tracker.expect(.sync, effects: &effects)
        effects = Self.feed(&tracker, [.parseComplete, .bindComplete, .commandComplete(tag: "ROLLBACK")])
        #expect(effects == [.finished(Statement(number: 9, startedAt: 1, commandTag: "ROLLBACK"))])
        let extra = Self.frame(.readyForQuery(.idle))
        #expect(tracker.check(extra.type, frame: extra).disposition == .drop)
        let own = Self.frame(.readyForQuery(.idle))
        #expect(tracker.check(own.type, frame: own).disposition == .forward)
        effects = Self.feed(&tracker, [.readyForQuery(.idle)])
        #expect(tracker.isIdle)
    }
}
