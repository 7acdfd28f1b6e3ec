import ArgumentParser
import CustosCore
import CustosPostgres
import CustosServer
import Foundation
import Logging

/// `custos replay`: runs a recorded session's reads again and compares their results with the
/// digests recorded at the time.
struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay", abstract: "Run a recorded session's statements again on a connection and compare result digests.")

    @OptionGroup var options: ConfigOption
    @Argument(help: "Session id (or a unique prefix).") var session: String
    @Option(help: "The connection (from the configuration) to run them on, e.g. a restored copy.") var against: String
    @Flag(help: "Also run writes; only on a connection marked sandbox: true.") var allowWrites = false
    @Option(help: "Show the first N rows of each replayed result, masked by your policy (needs --token).") var rows: Int = 0
    @Option(help: "Your OIDC token, for --rows (default: $CUSTOS_TOKEN).") var token: String?
    @Flag(help: "Print a JSON object.") var json = false

    func run() async throws {
        let config = try options.load()
        let store = try openStore(options)
        var profile = MaskingProfile.none
        if rows > 0 {
            guard let token = token ?? ProcessInfo.processInfo.environment["CUSTOS_TOKEN"], !token.isEmpty else {
                throw CLIError("--rows shows data masked by your policy: give --token or CUSTOS_TOKEN")
            }
            do {
                profile = try await Replay.viewerProfile(token: token, config: config, connection: against).1
            } catch {
                throw CLIError("\(error)")
            }
        }
        let logger = Logger(label: "custos.replay")
        let summary: SessionSummary
        let lines: [Replay.Line]
        do {
            (summary, lines) = try await Replay.run(
                session: session, store: store, config: config, connection: against, allowWrites: allowWrites, profile: profile, rows: rows,
                logger: logger)
        } catch let error as Replay.ReplayError {
            throw CLIError(error.description)
        } catch let error as ConfigError {
            throw CLIError("\(options.path): \(error)")
        }
        if json { return print(Self.json(summary, lines).text) }
        print("session \(summary.id) (\(summary.email ?? summary.subject ?? "-"), \(summary.startedAt)) replayed against \(against)")
        print(pad("#", 4), pad("STATEMENT", 42), pad("RECORDED", 14), pad("REPLAYED", 14), "VERDICT")
        for line in lines {
            let text = Self.oneLine(line.text, width: 40)
            let recorded = line.recorded.map { String($0.ordered.prefix(12)) } ?? (line.recordedError.map { "error \($0)" } ?? "-")
            let replayed = line.replayed.map { $0.errorCode.map { "error \($0)" } ?? String($0.ordered.prefix(12)) } ?? "-"
            print(pad(String(line.number), 4), pad(text, 42), pad(recorded, 14), pad(replayed, 14), line.verdict.rawValue + (line.note.map { ": \($0)" } ?? ""))
            if let outcome = line.replayed, !outcome.sample.isEmpty {
                print("     " + outcome.columns.joined(separator: " | "))
                for row in outcome.sample { print("     " + row.map { Self.oneLine($0 ?? "NULL", width: 30) }.joined(separator: " | ")) }
            }
        }
        let counts = Dictionary(grouping: lines, by: \.verdict.rawValue).map { "\($0.value.count) \($0.key)" }.sorted()
        print(counts.isEmpty ? "(no statements)" : counts.joined(separator: ", "))
    }

    /// Text on one line, control characters shown as `?`, cut to `width`.
    static func oneLine(_ text: String, width: Int) -> String {
        let flat = String(text.unicodeScalars.map { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) ? " " : Character($0) })
        return flat.count > width ? String(flat.prefix(width - 1)) + "…" : flat
    }

    static func json(_ summary: SessionSummary, _ lines: [Replay.Line]) -> CanonicalJSON {
        func digest(_ value: (ordered: String, multiset: String)?) -> CanonicalJSON {
            value.map { ["ordered": .string($0.ordered), "multiset": .string($0.multiset)] } ?? .null
        }
        return [
            "session": summary.canonical,
            "statements": .array(
                lines.map { line in
                    [
                        "statement": .int(Int64(line.number)), "text": .string(line.text), "verdict": .string(line.verdict.rawValue), "note": .optional(line.note),
                        "recorded": ["digest": digest(line.recorded), "rows": .optional(line.recordedRows), "error": .optional(line.recordedError)],
                        "replayed": line.replayed.map { outcome in
                            [
                                "digest": digest((outcome.ordered, outcome.multiset)), "rows": .int(Int64(outcome.rows)), "error": .optional(outcome.errorCode),
                                "columns": .array(outcome.columns.map(CanonicalJSON.string)),
                                "sample": .array(outcome.sample.map { .array($0.map(CanonicalJSON.optional)) }),
                            ]
                        } ?? .null,
                    ]
                }),
        ]
    }
}
