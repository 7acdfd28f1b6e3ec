import ArgumentParser
import CustosCore
import CustosStore
import Foundation

/// `custos evidence export`: a folder an auditor can verify without Custos.
struct EvidenceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evidence", abstract: "Export verifiable evidence bundles.", subcommands: [Export.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write one session's (or a time range's) events, checkpoints, key and policies to a folder.")

        @OptionGroup var options: ConfigOption
        @Option(help: "The session (id or unique prefix).") var session: String?
        @Option(help: "Events at or after: RFC 3339 or a duration ago (with --until).") var since: String?
        @Option(help: "Events at or before: RFC 3339 or a duration ago (with --since).") var until: String?
        @Option(name: .shortAndLong, help: "The folder to create.") var output: String

        func validate() throws {
            guard (session != nil) != (since != nil || until != nil) else {
                throw ValidationError("give either --session, or --since and --until")
            }
            if session == nil, since == nil || until == nil { throw ValidationError("--since and --until go together") }
        }

        func run() throws {
            let config = try options.load()
            let store = try openStore(options)
            let scope: EvidenceBundle.Scope
            if let session {
                scope = .session(session)
            } else {
                scope = .time(since: try parseTime(since!, option: "--since"), until: try parseTime(until!, option: "--until"))
            }
            let summary: EvidenceBundle.Summary
            do {
                summary = try EvidenceBundle.export(from: store, scope: scope, signer: try signingKey(config), to: output)
            } catch let error as EvidenceBundle.BundleError {
                throw CLIError(error.description)
            }
            var line = "wrote \(output): \(summary.events) events (\(summary.inScope) in scope), \(summary.checkpoints) checkpoints, \(summary.policies) policies"
            if summary.unsigned > 0 { line += "; the last \(summary.unsigned) events are not signed by a checkpoint yet" }
            print(line)
        }
    }
}
