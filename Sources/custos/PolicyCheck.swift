import ArgumentParser
import CustosCore
import CustosServer
import CustosSQL
import Foundation

/// `custos policy check`: what the policy would decide, from the config alone.
struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "policy", abstract: "Inspect the statement policy.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "What would happen if this identity ran this SQL on this connection (nothing is run, nothing is contacted).")

        @OptionGroup var options: ConfigOption
        @Option(help: "The identity's subject (sub).") var sub: String
        @Option(help: "The identity's email.") var email: String?
        @Option(help: "Comma-separated groups.") var groups: String = ""
        @Option(help: "Connection name.") var connection: String
        @Option(help: "The SQL text (several statements allowed).") var sql: String?
        @Option(help: "Comma-separated result columns (table.column or schema.table.column): report their masking.") var columns: String?
        @Flag(help: "Print a JSON object.") var json = false

        func validate() throws {
            if sql == nil && columns == nil { throw ValidationError("give --sql, --columns or both") }
        }

        /// What each named column gets for this identity: a strategy, `detect` (no rule names it;
        /// content detectors look at its values) or `none`.
        static func masking(_ list: String, profile: MaskingProfile) throws -> [(String, String)] {
            try list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map { name in
                let parts = name.lowercased().split(separator: ".").map(String.init)
                guard parts.count == 2 || parts.count == 3 else { throw fail("--columns: \"\(name)\" is not table.column or schema.table.column", code: 2) }
                let strategy = profile.strategy(schema: parts.count == 3 ? parts[0] : nil, table: parts[parts.count - 2], column: parts[parts.count - 1])
                return (name, strategy?.rawValue ?? (profile.detectors.isEmpty ? "none" : "detect"))
            }
        }

        func run() throws {
            let config: CustosConfig
            do {
                config = try CustosConfig.load(path: options.path)
            } catch {
                throw fail("\(options.path): \(error)", code: 2)
            }
            guard let target = config.connections.first(where: { $0.name == connection }) else {
                throw fail("unknown connection \"\(connection)\" (connections: \(config.connections.map(\.name).joined(separator: ", ")))", code: 2)
            }
            let identity = Identity(
                subject: sub, email: email, groups: groups.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
                issuer: "custos policy check", tokenID: nil, expiresAt: .distantFuture)
            let policy = config.policy ?? .denyAll
            let gate = Gate(policy: policy, analyzer: PostgresAnalyzer())
            let connectionTarget = ConnectionTarget(name: target.name, kind: "postgres", allowGroups: target.allowGroups, sandbox: target.sandbox)
            let access = gate.authorize(identity, on: connectionTarget)
            let statements = sql.map(gate.analyze) ?? []
            let evaluation = policy.evaluate(statements, identity: identity, connection: target.name)
            let decision = access.verdict == .allow && sql != nil ? evaluation.decision : access
            let profile = gate.masking(for: identity, on: connectionTarget)
            let masking = try columns.map { try Self.masking($0, profile: profile) }
            if json {
                var object: [String: Any] = [
                    "decision": decision.verdict.rawValue, "rule": decision.rule ?? "default", "message": decision.message ?? NSNull(),
                    "policy": policy.version,
                    "statements": evaluation.parts.map { part -> [String: Any] in
                        [
                            "text": part.statement.text, "kind": part.statement.kind, "decision": part.decision.verdict.rawValue,
                            "rule": part.decision.rule ?? "default", "tables_read": part.statement.tablesRead,
                            "tables_written": part.statement.tablesWritten, "functions": part.statement.functions,
                            "flags": part.statement.flags.map(\.rawValue).sorted(), "read_only": part.statement.readOnly,
                        ]
                    },
                ]
                if let masking {
                    object["masking"] = Dictionary(masking, uniquingKeysWith: { $1 })
                    object["masking_rule"] = profile.rule ?? NSNull()
                }
                return try printJSON(object)
            }
            if let masking {
                print("masking by \(profile.rule.map { "rule \($0)" } ?? "no rule (nothing is masked)")")
                for (column, strategy) in masking { print("  \(column): \(strategy)") }
                if !profile.detectors.isEmpty {
                    print("  detectors: \(profile.detectors.map { "\($0.key.rawValue) \($0.value.rawValue)" }.sorted().joined(separator: ", "))")
                }
                guard sql != nil else { return }
                print("")
            }
            print("\(decision.verdict.rawValue.uppercased()) by rule \(decision.rule ?? "default")\(decision.message.map { ": \($0)" } ?? "")")
            print("policy \(policy.version)")
            for part in evaluation.parts {
                let statement = part.statement
                print("")
                print("  \(statement.text)")
                print("    kind \(statement.kind)\(statement.readOnly ? " (read-only)" : ""); \(part.decision.verdict.rawValue) by \(part.decision.rule ?? "default")")
                if !statement.tablesRead.isEmpty { print("    reads     \(statement.tablesRead.joined(separator: ", "))") }
                if !statement.tablesWritten.isEmpty { print("    writes    \(statement.tablesWritten.joined(separator: ", "))") }
                if !statement.functions.isEmpty { print("    functions \(statement.functions.joined(separator: ", "))") }
                if !statement.flags.isEmpty { print("    flags     \(statement.flags.map(\.rawValue).sorted().joined(separator: ", "))") }
            }
        }
    }
}

/// Prints `message` to stderr and returns the exit code to throw (ArgumentParser's own errors exit 1).
func fail(_ message: String, code: Int32) -> ExitCode {
    FileHandle.standardError.write(Data("custos: \(message)\n".utf8))
    return ExitCode(code)
}
