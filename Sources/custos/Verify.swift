import ArgumentParser
import CustosCore
import CustosServer
import CustosStore
import Foundation
import Logging

/// `custos verify`: checks the store's chains (or a bundle's) and exits 0 when intact, 1 when not,
/// 2 when it could not check.
struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the record's hash chains and signed checkpoints (exit 0 intact, 1 not intact, 2 cannot check).")

    @OptionGroup var options: ConfigOption
    @Option(help: "The store to check instead of recording.store (e.g. a copy).") var store: String?
    @Option(help: "An evidence bundle folder to check, offline (no store or config needed).") var bundle: String?
    @Option(help: "Only events at or after: RFC 3339 or a duration ago (2h, 7d).") var since: String?
    @Option(help: "Only events at or before: RFC 3339 or a duration ago.") var until: String?
    @Option(help: "Trust this Ed25519 public key (64 hex digits) instead of keys.signing_file's or the bundle's own.") var publicKey: String?
    @Flag(help: "Fail when events after the last checkpoint are not signed yet.") var requireSigned = false
    @Flag(help: "Print a JSON object.") var json = false
    @Flag(help: "First load into the store what its write-ahead journal holds beyond it (what a crash left; the gateway's next start does the same).")
    var recover = false

    func run() throws {
        let result: VerificationResult
        do {
            result = try check()
        } catch {
            FileHandle.standardError.write(Data("custos verify: cannot check: \(error)\n".utf8))
            throw ExitCode(2)
        }
        var failed = result.problem != nil
        if requireSigned && result.problem == nil && result.unsignedTail > 0 { failed = true }
        if json {
            var object = result.canonical
            if case .object(var fields) = object {
                fields["ok"] = .bool(!failed)
                object = .object(fields)
            }
            print(object.text)
        } else {
            describe(result, failed: failed)
        }
        if failed { throw ExitCode(1) }
    }

    private func check() throws -> VerificationResult {
        if let publicKey, publicKey.count != 64 || Hex.decode(publicKey) == nil {
            throw CLIError("--public-key: expected 64 hex digits")
        }
        if let bundle {
            guard since == nil, until == nil, store == nil else { throw CLIError("--bundle checks the whole bundle: drop --since, --until and --store") }
            return try EvidenceBundle.verify(folder: bundle, trustedKey: publicKey?.lowercased())
        }
        let config = try options.load()
        let path = store ?? config.recording.store
        guard FileManager.default.fileExists(atPath: path) else { throw CLIError("no store at \(path)") }
        let key = try publicKey?.lowercased() ?? signingPublicKey(config)
        if recover {
            var logger = Logger(label: "custos.verify")
            logger.logLevel = .warning
            let loaded = try EventWriter.recoverJournal(store: try EventStore(path: path), logger: logger)
            FileHandle.standardError.write(Data("custos verify: loaded \(loaded) event\(loaded == 1 ? "" : "s") from the write-ahead journal\n".utf8))
        } else if let pending = try? EventWriter.journalPending(store: try EventStore(path: path, readOnly: true)), pending > 0 {
            FileHandle.standardError.write(
                Data(
                    ("custos verify: the write-ahead journal next to the store holds \(pending) event\(pending == 1 ? "" : "s") not in it yet "
                        + "(a running gateway loads them within milliseconds; after a crash, use --recover or start the gateway)\n").utf8))
        }
        return try EventStore(path: path, readOnly: true).verify(
            trustedKey: key, since: try since.map { try parseTime($0, option: "--since") }, until: try until.map { try parseTime($0, option: "--until") })
    }

    private func describe(_ result: VerificationResult, failed: Bool) {
        for report in result.writers {
            let range = report.firstSeq.map { "seq \($0)–\(report.lastSeq ?? $0)" } ?? "no events"
            var line = "writer \(report.writerID): \(report.events) events (\(range)), \(report.checkpoints) checkpoints"
            line += report.signedThrough.map { ", signed through seq \($0)" } ?? ", none signed"
            if report.unsignedTail > 0 { line += ", unsigned tail of \(report.unsignedTail) event\(report.unsignedTail == 1 ? "" : "s")" }
            if report.pruned > 0 { line += ", \(report.pruned) payloads removed by retention" }
            if report.withheld > 0 { line += ", \(report.withheld) payloads withheld (outside the bundle's scope)" }
            print(line)
        }
        if let problem = result.problem {
            let kind = problem.kind == .signatureInvalid ? "signature invalid" : problem.kind.rawValue
            print("NOT INTACT: \(kind) at writer \(problem.writerID) seq \(problem.seq)\(problem.sessionID.map { " (session \($0))" } ?? ""): \(problem.detail)")
        } else if failed {
            print("NOT SIGNED: \(result.unsignedTail) events after the last checkpoint (--require-signed)")
        } else {
            print("intact")
        }
    }
}

/// The configured signing key (`keys.signing_file`).
func signingKey(_ config: CustosConfig) throws -> CheckpointSigner {
    let path = config.keys.signingFile
    guard let text = try? String(contentsOfFile: path, encoding: .utf8), let seed = Hex.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)),
        seed.count == 32
    else {
        throw CLIError("cannot read the signing key \(path) (keys.signing_file)")
    }
    return try CheckpointSigner(seed: seed)
}

/// The public key of the configured signing key (hex).
func signingPublicKey(_ config: CustosConfig) throws -> String {
    do {
        return try signingKey(config).publicKey
    } catch let error as CLIError {
        throw CLIError("\(error.description); pass --public-key")
    }
}
