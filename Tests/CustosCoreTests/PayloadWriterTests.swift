import Foundation
import Testing

@testable import CustosCore

/// The statement and result payloads are written member by member (CanonicalJSONWriter); these
/// tests hold them to the tree form (CanonicalJSON), whose serialization docs/evidence.md defines.
@Suite("Payloads written directly")
struct PayloadWriterTests {
    static let awkward = ["", "plain", "quote \" and \\ back", "line\nbreak\ttab\u{1}", "é ü 🙂", "\u{7F}\u{1F}"]

    static func decisionTree(_ decision: Decision) -> CanonicalJSON {
        var fields: [String: CanonicalJSON] = [
            "verdict": .string(decision.verdict.rawValue), "rule": .optional(decision.rule), "policy": .optional(decision.policy),
            "message": .optional(decision.message),
        ]
        if let approval = decision.approval { fields["approval"] = .string(approval) }
        return .object(fields)
    }

    @Test("a statement payload is byte for byte its tree form", arguments: [false, true])
    func statementPayload(withParameters: Bool) {
        let events = SessionEvents(sessionID: "s-1")
        for (index, text) in Self.awkward.enumerated() {
            var action = Action(
                channel: withParameters ? .extended : .simple, text: text, parameters: withParameters ? [text, nil, "2"] : [],
                statements: [
                    StatementInfo(kind: "select", tablesRead: ["b.t", text, "a"], tablesWritten: ["a"], readOnly: true, text: text),
                    StatementInfo(kind: "select", tablesRead: ["b.t"], readOnly: true, text: text),
                ])
            action.parameterTypes = withParameters ? [25, 0, -1] : []
            action.parameterFormats = withParameters ? [0, 1, Int64.min] : []
            var decision = Decision(verdict: index % 2 == 0 ? .allow : .review, message: index % 3 == 0 ? nil : text, rule: text, policy: nil)
            if index % 2 == 1 { decision.approval = "a-\(index)" }
            let recorded = SessionEvents.RecordedStatement(text: text + "!", parameters: action.parameters, masked: index % 2 == 0)

            var tree: [String: CanonicalJSON] = [
                "statement": .int(Int64(index)), "protocol": .string(action.channel.rawValue), "text": .string(recorded.text),
                "parameters": .array(recorded.parameters.map(CanonicalJSON.optional)), "text_masked": .bool(recorded.masked),
                "decision": Self.decisionTree(decision),
                "tables": .array(Set(["b.t", text, "a"]).sorted().map(CanonicalJSON.string)),
            ]
            if withParameters {
                tree["parameter_types"] = .array(action.parameterTypes.map(CanonicalJSON.int))
                tree["parameter_formats"] = .array(action.parameterFormats.map(CanonicalJSON.int))
            }
            let draft = events.statement(number: index, action: action, decision: decision, recorded: recorded)
            #expect(String(decoding: draft.payload, as: UTF8.self) == CanonicalJSON.object(tree).text)
        }
    }

    @Test("a result payload is byte for byte its tree form")
    func resultPayload() {
        let events = SessionEvents(sessionID: "s-1")
        for (index, text) in Self.awkward.enumerated() {
            var outcome = SessionEvents.Outcome(
                commandTag: index % 2 == 0 ? "SELECT \(index)" : nil, rows: index % 3 == 0 ? nil : index,
                errorCode: index % 2 == 1 ? "42P01" : nil, errorMessage: index == 3 ? nil : text, durationMicros: Int64(index) * 1_000_003 - 7)
            outcome.columns = index == 0 ? [] : [.init(name: text, type: 23, format: 0), .init(name: "b", type: -4, format: 1)]
            outcome.sample = index == 0 ? [] : [[text, nil], ["1", "\\x00"]]
            outcome.digest = index % 2 == 0 ? (String(repeating: "a", count: 64), String(repeating: "0", count: 64)) : nil

            var error: CanonicalJSON = .null
            if let code = outcome.errorCode { error = ["sqlstate": .string(code), "message": .optional(outcome.errorMessage)] }
            let digest: CanonicalJSON = outcome.digest.map { ["ordered": .string($0.ordered), "multiset": .string($0.multiset)] } ?? .null
            let tree: CanonicalJSON = [
                "statement": .int(Int64(index)), "command_tag": .optional(outcome.commandTag), "rows": .optional(outcome.rows),
                "duration_us": .int(outcome.durationMicros), "error": error,
                "columns": .array(outcome.columns.map { ["name": .string($0.name), "type": .int($0.type), "format": .int($0.format)] }),
                "sample": .array(outcome.sample.map { .array($0.map(CanonicalJSON.optional)) }), "digest": digest,
            ]
            let draft = events.result(number: index, outcome: outcome)
            #expect(String(decoding: draft.payload, as: UTF8.self) == tree.text)
        }
    }

    @Test("a session.open payload is byte for byte its tree form, with and without a backend", arguments: [false, true])
    func openPayload(withBackend: Bool) {
        let events = SessionEvents(sessionID: "s-1")
        let client = SessionEvents.Client(address: "127.0.0.1:5", database: "db \"x\"", startupUser: "agent", applicationName: nil)
        let identity = Identity(
            subject: "sub\n1", email: "a@example.com", groups: ["b", "a"], issuer: "https://issuer", tokenID: nil,
            expiresAt: Date(timeIntervalSince1970: 1_800_000_000), actors: ["bot"])
        let connection = ConnectionTarget(name: "main", kind: "postgres", allowGroups: ["a"])
        let decision = Decision(verdict: .allow, rule: "connection.groups", policy: "p1")
        let backend = withBackend ? SessionEvents.Backend(processID: 4242, reused: true) : nil
        var tree: [String: CanonicalJSON] = [
            "client": SessionEvents.client(client), "connection": "main", "identity": SessionEvents.identity(identity),
            "decision": Self.decisionTree(decision),
        ]
        if let backend { tree["backend"] = ["pid": .int(Int64(backend.processID)), "reused": .bool(backend.reused)] }
        let draft = events.open(client: client, identity: identity, connection: connection, decision: decision, backend: backend)
        #expect(String(decoding: draft.payload, as: UTF8.self) == CanonicalJSON.object(tree).text)
    }

    @Test("the writer nests objects and arrays with commas where they belong, one-character keys included")
    func writerNesting() {
        var json = CanonicalJSONWriter()
        json.beginObject()
        json.key("a")
        json.beginArray()
        json.beginArray()
        json.endArray()
        json.object("k", nil, "v", "x")
        json.int(-1)
        json.endArray()
        json.key("b")
        json.value(["z": true, "y": .null])
        json.key("c")
        json.bool(false)
        json.endObject()
        #expect(String(decoding: json.bytes, as: UTF8.self) == #"{"a":[[],{"k":null,"v":"x"},-1],"b":{"y":null,"z":true},"c":false}"#)
    }

    @Test("integers print as Swift prints them, both extremes included")
    func integers() {
        for value: Int64 in [0, 7, -7, 10, 1_000_000, .max, .min, .min + 1] {
            #expect(CanonicalJSON.int(value).text == String(value))
        }
    }
}
