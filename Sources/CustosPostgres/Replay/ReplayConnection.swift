import Crypto
import CustosCore
import Foundation
import Logging
import NIOCore

/// One statement to run again, as it was recorded.
public struct ReplayStatement: Sendable {
    public var text: String
    /// Parameters as recorded: text, or `\x` hex for binary ones; nil for NULL.
    public var parameters: [String?]
    /// Sent as Parse/Bind/Execute (extended protocol) rather than a simple Query.
    public var extended: Bool
    /// The result format codes the client asked for (from the recorded columns).
    public var resultFormats: [Int16]
    /// The parameter types the Parse named and the parameters' format codes, as recorded
    /// (empty in records older than these fields: `\x` parameters are then taken as binary).
    public var parameterTypes: [UInt32]
    public var parameterFormats: [Int16]

    public init(text: String, parameters: [String?], extended: Bool, resultFormats: [Int16], parameterTypes: [UInt32] = [], parameterFormats: [Int16] = []) {
        self.text = text
        self.parameters = parameters
        self.extended = extended
        self.resultFormats = resultFormats
        self.parameterTypes = parameterTypes
        self.parameterFormats = parameterFormats
    }
}

/// What running a statement again gave: the keyed digests of its raw rows (as the gateway
/// computes them, docs/evidence.md), and the first rows masked for whoever looks at them.
public struct ReplayOutcome: Sendable {
    public var rows = 0
    public var ordered = ""
    public var multiset = ""
    public var errorCode: String?
    public var errorMessage: String?
    /// Names of the first result set's columns.
    public var columns: [String] = []
    /// Its first rows, masked by the viewer's profile (binary values as `\x` hex).
    public var sample: [[String?]] = []
}

/// A connection of Custos's own to a target for `custos replay`: statements run one at a time,
/// in a session that refuses writes unless `readOnly` is off (PostgreSQL's
/// `default_transaction_read_only`, so a statement misread as a read still cannot write).
public final class ReplayConnection: Sendable {
    private let client: BackendClient
    private let catalog: Catalog
    private let digestKey: KeyedHash
    private let masker: ValueMasker
    private let profile: MaskingProfile
    private let sampleRows: Int
    private let eventLoop: any EventLoop

    public init(
        target: PostgresTarget, readOnly: Bool, digestKey: SymmetricKey, maskingKey: SymmetricKey, profile: MaskingProfile, sampleRows: Int,
        eventLoop: any EventLoop, logger: Logger
    ) {
        self.client = BackendClient(
            target: target, eventLoop: eventLoop, logger: logger, applicationName: "custos-replay",
            settings: readOnly ? [("default_transaction_read_only", "on")] : [], timeout: .seconds(300))
        self.catalog = Catalog(target: target, logger: logger)
        self.digestKey = KeyedHash(key: digestKey)
        self.masker = ValueMasker(masker: Masker(hashKey: maskingKey), detectors: profile.detectors)
        self.profile = profile
        self.sampleRows = sampleRows
        self.eventLoop = eventLoop
    }

    /// Runs one statement and digests what it returned.
    public func run(_ statement: ReplayStatement) async throws -> ReplayOutcome {
        let collector = Collector(digest: ResultDigest(keyed: digestKey), keep: sampleRows)
        let messages: [FrontendMessage]
        if statement.extended {
            var formats: [Int16] = []
            var values: [ByteBuffer?] = []
            for (index, parameter) in statement.parameters.enumerated() {
                guard let parameter else {
                    formats.append(0)
                    values.append(nil)
                    continue
                }
                // Binary parameters were recorded as `\x` hex: send their bytes back as binary.
                let binary = index < statement.parameterFormats.count ? statement.parameterFormats[index] == 1 : parameter.hasPrefix("\\x")
                if binary, parameter.hasPrefix("\\x"), let bytes = Hex.decode(String(parameter.dropFirst(2))) {
                    formats.append(1)
                    values.append(ByteBuffer(bytes: bytes))
                } else {
                    formats.append(0)
                    values.append(ByteBuffer(string: parameter))
                }
            }
            messages = [
                .parse(.init(statement: "", query: statement.text, parameterTypes: statement.parameterTypes)),
                .bind(.init(portal: "", statement: "", parameterFormats: formats, parameters: values, resultFormats: statement.resultFormats)),
                .describe(.init(kind: UInt8(ascii: "P"), name: "")), .execute(portal: "", maxRows: 0), .sync,
            ]
        } else {
            messages = [.query(statement.text)]
        }
        _ = try await client.run(messages, sink: { collector.take($0) }).get()
        var outcome = try await eventLoop.submit { collector.outcome() }.get()
        if !collector.columns.isEmpty {
            outcome.sample = try await masked(collector.kept, columns: collector.columns)
        }
        return outcome
    }

    /// The kept rows as text, masked by the viewer's profile (columns resolved through the catalog).
    private func masked(_ rows: [[ByteBuffer?]], columns: [BackendMessage.Column]) async throws -> [[String?]] {
        if !profile.isEmpty {
            try await catalog.resolve(Set(columns.map(\.tableOID)), on: eventLoop).get()
        }
        let plan = RowPlan.make(columns, profile: profile, table: catalog.cached)
        return rows.map { row in
            zip(row, plan.columns).map { value, column -> String? in
                guard let value else { return nil }
                return value.withUnsafeReadableBytes { bytes in
                    switch masker.mask(bytes, column: column) {
                    case .keep: return ResultCapture.render(bytes, format: column.format)
                    case .null: return nil
                    case .bytes(let masked): return masked.withUnsafeBytes { ResultCapture.render($0, format: column.format) }
                    }
                }
            }
        }
    }

    /// Ends the session.
    public func close() {
        client.close()
        catalog.close()
    }
}

/// Digests rows as they arrive. Unchecked Sendable: touched only on the connection's event loop.
private final class Collector: @unchecked Sendable {
    var digest: ResultDigest
    let keep: Int
    var formats: [Int16] = []
    var rows = 0
    var sets = 0
    var error: ErrorFields?
    var columns: [BackendMessage.Column] = []
    var kept: [[ByteBuffer?]] = []
    private var canonical: [UInt8] = []

    init(digest: ResultDigest, keep: Int) {
        self.digest = digest
        self.keep = keep
    }

    func take(_ message: BackendMessage) {
        switch message {
        case .rowDescription(let described):
            sets += 1
            formats = described.map(\.format)
            if sets == 1 { columns = described }
        case .dataRow(let values):
            add(values)
            if sets == 1, kept.count < keep { kept.append(values) }
        case .copyOutResponse(let response):
            sets += 1
            formats = [Int16(response.format)]
        case .copyData(let data):
            add([data])
        case .errorResponse(let fields):
            if error == nil { error = fields }
        default:
            break
        }
    }

    /// Adds a row in the canonical encoding: column count, then format, length and bytes per column.
    private func add(_ values: [ByteBuffer?]) {
        rows += 1
        canonical.removeAll(keepingCapacity: true)
        let count = UInt16(truncatingIfNeeded: values.count)
        canonical += [UInt8(count >> 8), UInt8(count & 0xFF)]
        for (index, value) in values.enumerated() {
            let format = UInt16(bitPattern: index < formats.count ? formats[index] : 0)
            canonical += [UInt8(format >> 8), UInt8(format & 0xFF)]
            let length = UInt32(bitPattern: Int32(value.map { $0.readableBytes } ?? -1))
            canonical += [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
            if let value { value.withUnsafeReadableBytes { canonical += $0 } }
        }
        digest.add(row: canonical)
    }

    func outcome() -> ReplayOutcome {
        var outcome = ReplayOutcome()
        outcome.rows = rows
        outcome.ordered = digest.orderedHex
        outcome.multiset = digest.multisetHex
        outcome.errorCode = error?.sqlstate
        outcome.errorMessage = error?.message
        outcome.columns = columns.map(\.name)
        return outcome
    }
}
