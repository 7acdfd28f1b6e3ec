import Crypto
import CustosCore
import NIOCore

/// What Custos keeps of one statement's results: keyed digests of the raw rows as the backend
/// sent them, the columns, and the first rows in the masked form the client received. A class:
/// rows update it in place, never through a copy.
final class ResultCapture {
    var digest: ResultDigest
    var columns: [SessionEvents.ResultColumn] = []
    var sample: [[String?]] = []
    let sampleLimit: Int

    init(key: ResultDigest.Keyed, sampleLimit: Int) {
        digest = ResultDigest(keyed: key)
        self.sampleLimit = sampleLimit
    }

    func describe(_ plan: RowPlan) {
        // A string with several result sets keeps the columns of the first.
        if columns.isEmpty {
            columns = zip(plan.names, plan.columns).map { SessionEvents.ResultColumn(name: $0, type: Int64($1.typeOID), format: Int64($1.format)) }
        }
    }

    var wantsSample: Bool { sample.count < sampleLimit }

    static func render(_ value: UnsafeRawBufferPointer, format: Int16) -> String {
        if format == 0 { return String(decoding: value, as: UTF8.self) }
        let hex = Array("0123456789abcdef".utf8)
        var out = [UInt8(ascii: "\\"), UInt8(ascii: "x")]
        out.reserveCapacity(2 + value.count * 2)
        for byte in value { out += [hex[Int(byte >> 4)], hex[Int(byte & 15)]] }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Two byte areas reused for every row of a session: the canonical encoding that is digested and
/// the rebuilt DataRow. Rows are written with plain memory copies, so a row costs no allocation
/// beyond the buffer that is sent.
final class RowScratch {
    private(set) var canonical: UnsafeMutableRawPointer
    private var canonicalCapacity = 4096
    private(set) var output: UnsafeMutableRawPointer
    private var outputCapacity = 4096

    init() {
        canonical = .allocate(byteCount: canonicalCapacity, alignment: 8)
        output = .allocate(byteCount: outputCapacity, alignment: 8)
    }

    deinit {
        canonical.deallocate()
        output.deallocate()
    }

    func reserveCanonical(_ count: Int) {
        guard count > canonicalCapacity else { return }
        canonical.deallocate()
        canonicalCapacity = max(count, canonicalCapacity * 2)
        canonical = .allocate(byteCount: canonicalCapacity, alignment: 8)
    }

    /// Grows the output area keeping its first `used` bytes.
    func reserveOutput(_ count: Int, used: Int) {
        guard count > outputCapacity else { return }
        let capacity = max(count, outputCapacity * 2)
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        grown.copyMemory(from: output, byteCount: used)
        output.deallocate()
        output = grown
        outputCapacity = capacity
    }
}

/// Rewrites DataRows by a ``RowPlan`` and feeds the result capture.
enum DataRowMasking {
    enum Failure: Error {
        case malformed
    }

    /// Digests the row, samples its masked form, and appends the rewritten DataRow to `batch`:
    /// false (nothing appended) when the original can go unchanged.
    static func process(
        _ frame: PostgresFrame, plan: RowPlan, values: ValueMasker, capture: ResultCapture?, scratch: RowScratch, into batch: inout ByteBuffer
    ) throws(Failure) -> Bool {
        var malformed = false
        let result: Bool = frame.body.withUnsafeReadableBytes { raw -> Bool in
            guard raw.count >= 2, let base = raw.baseAddress else {
                malformed = true
                return false
            }
            let count = Int(raw.loadUnaligned(fromByteOffset: 0, as: UInt16.self).bigEndian)
            // The canonical encoding is the body with a format code before each length.
            scratch.reserveCanonical(raw.count + 2 * count)
            let canonical = scratch.canonical
            canonical.storeBytes(of: UInt16(count).bigEndian, toByteOffset: 0, as: UInt16.self)
            var written = 2
            let masks = plan.masks
            var used = 7  // type, length, column count
            if masks {
                scratch.reserveOutput(raw.count + 64, used: 0)
                scratch.output.storeBytes(of: UInt8(ascii: "D"), toByteOffset: 0, as: UInt8.self)
                scratch.output.storeBytes(of: UInt16(count).bigEndian, toByteOffset: 5, as: UInt16.self)
            }
            let sampling = capture?.wantsSample ?? false
            var sampleRow: [String?] = []
            var offset = 2
            for index in 0..<count {
                guard offset + 4 <= raw.count else {
                    malformed = true
                    return false
                }
                let length = Int(Int32(bitPattern: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self).bigEndian))
                offset += 4
                guard length >= -1, length <= raw.count - offset else {
                    malformed = true
                    return false
                }
                let column = index < plan.columns.count ? plan.columns[index] : nil
                let format = column?.format ?? 0
                canonical.storeBytes(of: UInt16(bitPattern: format).bigEndian, toByteOffset: written, as: UInt16.self)
                canonical.storeBytes(of: UInt32(bitPattern: Int32(length)).bigEndian, toByteOffset: written + 2, as: UInt32.self)
                written += 6
                let value = UnsafeRawBufferPointer(start: base + offset, count: max(length, 0))
                if length > 0 {
                    (canonical + written).copyMemory(from: base + offset, byteCount: length)
                    written += length
                    offset += length
                }
                guard masks else {
                    if sampling { sampleRow.append(length < 0 ? nil : ResultCapture.render(value, format: format)) }
                    continue
                }
                if let column, length >= 0, case .mask(let strategy) = column.action, column.typeClass == .text {
                    // The common case, masked straight into the row being built.
                    scratch.reserveOutput(used + 4 + Masker.maskedCapacity(length), used: used)
                    let target = scratch.output + used + 4
                    if let written = values.masker.mask(value, strategy: strategy, into: target) {
                        scratch.output.storeBytes(of: UInt32(written).bigEndian, toByteOffset: used, as: UInt32.self)
                        used += 4 + written
                        if sampling { sampleRow.append(ResultCapture.render(UnsafeRawBufferPointer(start: target, count: written), format: format)) }
                    } else {
                        scratch.output.storeBytes(of: UInt32(bitPattern: -1).bigEndian, toByteOffset: used, as: UInt32.self)
                        used += 4
                        if sampling { sampleRow.append(nil) }
                    }
                    continue
                }
                var outcome = ValueMasker.Outcome.keep
                if let column {
                    if length >= 0 { outcome = values.mask(value, column: column) }
                } else {
                    outcome = .null  // more values than described: fail closed
                }
                switch outcome {
                case .keep:
                    scratch.reserveOutput(used + 4 + max(length, 0), used: used)
                    scratch.output.storeBytes(of: UInt32(bitPattern: Int32(length)).bigEndian, toByteOffset: used, as: UInt32.self)
                    if length > 0 { (scratch.output + used + 4).copyMemory(from: value.baseAddress!, byteCount: length) }
                    used += 4 + max(length, 0)
                    if sampling { sampleRow.append(length < 0 ? nil : ResultCapture.render(value, format: format)) }
                case .null:
                    scratch.reserveOutput(used + 4, used: used)
                    scratch.output.storeBytes(of: UInt32(bitPattern: -1).bigEndian, toByteOffset: used, as: UInt32.self)
                    used += 4
                    if sampling { sampleRow.append(nil) }
                case .bytes(let bytes):
                    scratch.reserveOutput(used + 4 + bytes.count, used: used)
                    scratch.output.storeBytes(of: UInt32(bytes.count).bigEndian, toByteOffset: used, as: UInt32.self)
                    bytes.withUnsafeBytes { (scratch.output + used + 4).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                    used += 4 + bytes.count
                    if sampling { sampleRow.append(bytes.withUnsafeBytes { ResultCapture.render($0, format: format) }) }
                }
            }
            capture?.digest.add(row: UnsafeRawBufferPointer(start: canonical, count: written))
            if sampling { capture?.sample.append(sampleRow) }
            guard masks else { return false }
            scratch.output.storeBytes(of: UInt32(used - 1).bigEndian, toByteOffset: 1, as: UInt32.self)
            batch.writeBytes(UnsafeRawBufferPointer(start: scratch.output, count: used))
            return true
        }
        if malformed { throw .malformed }
        return result
    }

    @inline(__always) static func append(_ value: UInt16, to bytes: inout [UInt8]) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xff))
    }

    @inline(__always) static func append(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes.append(UInt8(value >> 24))
        bytes.append(UInt8((value >> 16) & 0xff))
        bytes.append(UInt8((value >> 8) & 0xff))
        bytes.append(UInt8(value & 0xff))
    }
}
