import ArgumentParser
import CustosServer
import Foundation

/// The `custos` command.
@main
struct Custos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custos",
        abstract: "An identity-aware gateway between AI agents and production systems.",
        subcommands: [Serve.self, Sessions.self, Verify.self, EvidenceCommand.self, ReplayCommand.self, PolicyCommand.self, ApprovalsCommand.self])
}

/// `--config`, shared by every verb.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Configuration file (default: $CUSTOS_CONFIG, else ./custos.yaml).")
    var config: String?

    var path: String {
        config ?? ProcessInfo.processInfo.environment["CUSTOS_CONFIG"] ?? "custos.yaml"
    }

    func load() throws -> CustosConfig {
        do {
            return try CustosConfig.load(path: path)
        } catch {
            throw CLIError("\(path): \(error)")
        }
    }
}

/// A message for the user and a non-zero exit.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
