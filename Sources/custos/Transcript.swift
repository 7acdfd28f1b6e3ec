import CustosCore
import Foundation

/// Rebuilds a session's statements from its `statement` and `result` events.
enum Transcript {
    struct Statement {
        var number: Int
        var at: String
        var protocolName: String
        var text: String
        var parameters: [String?]
        var decision: String
        var rule: String?
        var policy: String?
        var commandTag: String?
        var rows: Int?
        var durationMicros: Int?
        var error: (sqlstate: String, message: String)?
        var finished = false

        var object: [String: Any] {
            [
                "seq": number, "at": at, "protocol": protocolName, "text": text,
                "parameters": parameters.map { $0 as Any? ?? NSNull() }, "decision": decision, "rule": rule ?? NSNull(),
                "policy": policy ?? NSNull(), "duration_us": durationMicros ?? NSNull(), "command_tag": commandTag ?? NSNull(),
                "rows": rows ?? NSNull(), "error": error.map { ["sqlstate": $0.sqlstate, "message": $0.message] } ?? NSNull(),
            ]
        }
    }

    static func statements(from events: [Event]) -> [Statement] {
        var statements: [Int: Statement] = [:]
        for event in events {
            guard let payload = (try? JSONSerialization.jsonObject(with: Data(event.payload.utf8))) as? [String: Any],
                let number = payload["statement"] as? Int
            else { continue }
            switch event.kind {
            case EventKind.statement.rawValue:
                let decision = payload["decision"] as? [String: Any] ?? [:]
                statements[number] = Statement(
                    number: number, at: event.at, protocolName: payload["protocol"] as? String ?? "simple", text: payload["text"] as? String ?? "",
                    parameters: (payload["parameters"] as? [Any] ?? []).map { $0 as? String }, decision: decision["verdict"] as? String ?? "?",
                    rule: decision["rule"] as? String, policy: decision["policy"] as? String)
            case EventKind.result.rawValue:
                guard var statement = statements[number] else { continue }
                statement.finished = true
                statement.commandTag = payload["command_tag"] as? String
                statement.rows = payload["rows"] as? Int
                statement.durationMicros = payload["duration_us"] as? Int
                if let error = payload["error"] as? [String: Any] {
                    statement.error = (error["sqlstate"] as? String ?? "", error["message"] as? String ?? "")
                }
                statements[number] = statement
            default:
                continue
            }
        }
        return statements.keys.sorted().map { statements[$0]! }
    }

    static func eventObject(_ event: Event) -> [String: Any] {
        [
            "writer_id": event.writerID, "seq": event.seq, "at": event.at, "session_id": event.sessionID, "kind": event.kind,
            "payload": (try? JSONSerialization.jsonObject(with: Data(event.payload.utf8))) ?? event.payload,
            "payload_hash": event.payloadHash, "prev_hash": event.prevHash, "hash": event.hash,
        ]
    }
}
