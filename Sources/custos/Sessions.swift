import ArgumentParser
import CustosCore
import CustosServer
import CustosStore
import Foundation

/// `custos sessions list|show|export`: read the store named in the config (also while the gateway runs).
struct Sessions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Search, show and export recorded sessions.", subcommands: [List.self, Show.self, Export.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List sessions, newest first.")

        @OptionGroup var options: ConfigOption
        @Option(help: "Subject or email of the identity.") var identity: String?
        @Option(help: "Connection name.") var connection: String?
        @Option(help: "Started at or after: RFC 3339 or a duration ago (2h, 7d).") var since: String?
        @Option(help: "Started at or before: RFC 3339 or a duration ago.") var until: String?
        @Option(help: "With a statement decided so: allow, deny or review.") var decision: Decision.Verdict?
        @Option(help: "With a statement whose recorded text holds all these words.") var text: String?
        @Option(help: "With a statement that touched this table (name or schema.name).") var table: String?
        @Option(help: "At most this many sessions.") var limit: Int = 1000
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            let store = try openStore(options)
            let filter = SessionFilter(
                identity: identity, connection: connection, since: try since.map { try parseTime($0, option: "--since") },
                until: try until.map { try parseTime($0, option: "--until") }, decision: decision, text: text, table: table, limit: limit)
            let sessions = try store.sessions(filter)
            if json {
                return try printJSON(sessions.map(sessionObject))
            }
            if sessions.isEmpty { return print("no sessions") }
            print(pad("SESSION", 8), pad("STARTED", 27), pad("IDENTITY", 24), pad("CONNECTION", 12), pad("OUTCOME", 8), "STMTS")
            for session in sessions {
                print(
                    pad(String(session.id.prefix(8)), 8), pad(session.startedAt, 27), pad(session.email ?? session.subject ?? "-", 24),
                    pad(session.connection ?? session.database, 12), pad(session.outcome, 8), session.statementCount)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one session as a transcript.")

        @OptionGroup var options: ConfigOption
        @Argument(help: "Session id (or a unique prefix).") var id: String
        @Flag(help: "Print a JSON object.") var json = false

        func run() throws {
            let store = try openStore(options)
            guard let (session, events) = try store.session(id: id) else { throw CLIError("no session \(id)") }
            let statements = Transcript.statements(from: events)
            if json {
                var object = sessionObject(session)
                object["statements"] = statements.map(\.object)
                object["events"] = events.map(Transcript.eventObject)
                return try printJSON(object)
            }
            print("session     \(session.id)")
            print("identity    \(session.subject ?? "-")\(session.email.map { " <\($0)>" } ?? "") via \(session.issuer ?? "-")")
            print("groups      \(session.groups.joined(separator: ", "))")
            print("connection  \(session.connection ?? session.database) (startup user \(session.startupUser), application \(session.applicationName ?? "-"))")
            print("client      \(session.clientAddress)")
            print("time        \(session.startedAt) → \(session.endedAt ?? "(open)")")
            print("outcome     \(session.outcome)\(session.reason.map { ": \($0)" } ?? "")\(session.sqlstate.map { " [\($0)]" } ?? "")")
            print("")
            for statement in statements {
                let result: String
                if let error = statement.error {
                    result = "ERROR \(error.sqlstate): \(error.message)"
                } else if let tag = statement.commandTag {
                    result = tag + (statement.durationMicros.map { String(format: " (%.3f ms)", Double($0) / 1000) } ?? "")
                } else {
                    result = statement.finished ? "done" : "(no result recorded)"
                }
                print("[\(statement.number)] \(statement.at) \(statement.decision)\(statement.protocolName == "extended" ? " (extended)" : "")")
                print("    \(statement.text.replacingOccurrences(of: "\n", with: "\n    "))")
                if !statement.parameters.isEmpty {
                    print("    parameters: \(statement.parameters.map { $0.map { "'\($0)'" } ?? "NULL" }.joined(separator: ", "))")
                }
                for note in statement.notes { print("    · \(note)") }
                print("    → \(result)")
            }
            if statements.isEmpty { print("(no statements)") }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write one session's events, one JSON object per line, as stored.")

        @OptionGroup var options: ConfigOption
        @Argument(help: "Session id (or a unique prefix).") var id: String
        @Option(help: "Output format (jsonl).") var format: String = "jsonl"
        @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?

        func validate() throws {
            guard format == "jsonl" else { throw ValidationError("--format: only jsonl is supported") }
        }

        func run() throws {
            let store = try openStore(options)
            guard let (_, events) = try store.session(id: id) else { throw CLIError("no session \(id)") }
            let text = events.map { $0.line + "\n" }.joined()
            if let output {
                do {
                    try Data(text.utf8).write(to: URL(fileURLWithPath: output))
                } catch {
                    throw CLIError("cannot write \(output): \(error.localizedDescription)")
                }
            } else {
                print(text, terminator: "")
            }
        }
    }
}

extension Decision.Verdict: ExpressibleByArgument {}

func openStore(_ options: ConfigOption) throws -> EventStore {
    let config = try options.load()
    guard FileManager.default.fileExists(atPath: config.recording.store) else {
        throw CLIError("no store at \(config.recording.store) (recording.store): has the gateway run yet?")
    }
    do {
        return try EventStore(path: config.recording.store, readOnly: true)
    } catch {
        throw CLIError("cannot open the store \(config.recording.store): \(error)")
    }
}

/// Parses RFC 3339 or a relative duration (`2h`, `7d`, `30m`) meaning that long ago.
func parseTime(_ text: String, option: String) throws -> Date {
    if let date = Timestamp.parse(text) { return date }
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
    if let unit = text.last, let factor = units[unit], let amount = Double(text.dropLast()), amount >= 0 {
        return Date().addingTimeInterval(-amount * factor)
    }
    throw CLIError("\(option): expected RFC 3339 (2026-11-30T10:00:00Z) or a duration such as 2h or 7d, got \"\(text)\"")
}

func sessionObject(_ session: SessionSummary) -> [String: Any] {
    let optional: (String?) -> Any = { $0 ?? NSNull() }
    return [
        "id": session.id, "connection": optional(session.connection), "database": session.database, "startup_user": session.startupUser,
        "subject": optional(session.subject), "email": optional(session.email), "issuer": optional(session.issuer), "groups": session.groups,
        "client_address": session.clientAddress, "application_name": optional(session.applicationName), "started_at": session.startedAt,
        "ended_at": optional(session.endedAt), "outcome": session.outcome, "reason": optional(session.reason),
        "sqlstate": optional(session.sqlstate), "statement_count": session.statementCount,
    ]
}

func printJSON(_ value: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}
