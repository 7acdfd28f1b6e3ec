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
        /// What happened to it on the way: held for approval, decided, released by a pass.
        var notes: [String] = []

        var object: [String: Any] {
            [
                "seq": number, "at": at, "protocol": protocolName, "text": text,
                "parameters": parameters.map { $0 as Any? ?? NSNull() }, "decision": decision, "rule": rule ?? NSNull(),
                "policy": policy ?? NSNull(), "duration_us": durationMicros ?? NSNull(), "command_tag": commandTag ?? NSNull(),
                "rows": rows ?? NSNull(), "error": error.map { ["sqlstate": $0.sqlstate, "message": $0.message] } ?? NSNull(),
                "notes": notes,
            ]
        }
    }

    static func statements(from events: [Event]) -> [Statement] {
        var statements: [Int: Statement] = [:]
        // Approval events name no statement: they belong to the statement held for them.
        var heldFor: [String: Int] = [:]
        var lastReview: Int?
        for event in events {
            guard let text = event.payload, let payload = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] else { continue }
            if event.kind.hasPrefix("approval."), let approval = payload["approval"] as? [String: Any], let id = approval["id"] as? String {
                if event.kind == EventKind.approvalRequested.rawValue, let number = lastReview { heldFor[id] = number }
                guard let number = heldFor[id] else { continue }
                let decision = payload["decision"] as? [String: Any]
                let who = decision?["approver_email"] as? String ?? decision?["approver"] as? String ?? "?"
                let comment = (decision?["comment"] as? String).map { ": \($0)" } ?? ""
                switch event.kind {
                case EventKind.approvalRequested.rawValue: statements[number]?.notes.append("held for approval \(id)")
                case EventKind.approvalDecided.rawValue: statements[number]?.notes.append("\((decision?["verdict"] as? String) == "deny" ? "denied" : "approved") by \(who)\(comment)")
                case EventKind.approvalUsed.rawValue: statements[number]?.notes.append("ran on approval \(id)")
                case EventKind.approvalExpired.rawValue: statements[number]?.notes.append("approval \(id) expired")
                default: break
                }
                continue
            }
            guard let number = payload["statement"] as? Int else { continue }
            switch event.kind {
            case EventKind.statement.rawValue:
                let decision = payload["decision"] as? [String: Any] ?? [:]
                var statement = Statement(
                    number: number, at: event.at, protocolName: payload["protocol"] as? String ?? "simple", text: payload["text"] as? String ?? "",
                    parameters: (payload["parameters"] as? [Any] ?? []).map { $0 as? String }, decision: decision["verdict"] as? String ?? "?",
                    rule: decision["rule"] as? String, policy: decision["policy"] as? String)
                if let approval = decision["approval"] as? String {
                    statement.notes.append("released by approval \(approval)")
                    heldFor[approval] = number
                }
                lastReview = statement.decision == "review" ? number : lastReview
                statements[number] = statement
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
            "payload": event.payload.map { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) ?? $0 } ?? NSNull(),
            "payload_hash": event.payloadHash, "prev_hash": event.prevHash, "hash": event.hash,
        ]
    }
}
