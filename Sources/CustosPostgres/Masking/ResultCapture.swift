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
            columns = plan.columns.map { SessionEvents.ResultColumn(name: $0.name, type: Int64($0.typeOID), format: Int64($0.format)) }
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

/// Rewrites DataRows by a ``RowPlan`` and feeds the result capture.
enum DataRowMasking {
    enum Failure: Error {
        case malformed
    }

    /// Digests the row, samples its masked form, and returns the DataRow to send: nil when the
    /// original can go unchanged.
    static func process(
        _ frame: PostgresFrame, plan: RowPlan, values: ValueMasker, capture: ResultCapture?, scratch: inout [UInt8], allocator: ByteBufferAllocator
    ) throws(Failure) -> ByteBuffer? {
        let result: Result<ByteBuffer?, Failure> = frame.body.withUnsafeReadableBytes { raw in
            guard raw.count >= 2 else { return .failure(.malformed) }
            let count = Int(raw.loadUnaligned(fromByteOffset: 0, as: UInt16.self).bigEndian)
            scratch.removeAll(keepingCapacity: true)
            append(UInt16(count), to: &scratch)
            var out: ByteBuffer?
            if plan.masks {
                out = allocator.buffer(capacity: frame.raw.readableBytes + 32)
                out!.writeInteger(UInt8(ascii: "D"))
                out!.writeInteger(Int32(0))  // length, set below
                out!.writeInteger(Int16(truncatingIfNeeded: count))
            }
            let sampling = capture?.wantsSample ?? false
            var sampleRow: [String?] = []
            var offset = 2
            for index in 0..<count {
                guard offset + 4 <= raw.count else { return .failure(.malformed) }
                let length = Int(Int32(bitPattern: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self).bigEndian))
                offset += 4
                guard length >= -1, length <= raw.count - offset else { return .failure(.malformed) }
                let column = index < plan.columns.count ? plan.columns[index] : nil
                let format = column?.format ?? 0
                append(UInt16(bitPattern: format), to: &scratch)
                append(UInt32(bitPattern: Int32(length)), to: &scratch)
                let value = length > 0 ? UnsafeRawBufferPointer(rebasing: raw[offset..<offset + length]) : UnsafeRawBufferPointer(start: nil, count: 0)
                if length > 0 { scratch.append(contentsOf: value) }
                if length >= 0 { offset += length }
                var outcome = ValueMasker.Outcome.keep
                if length >= 0, let column, plan.masks {
                    outcome = values.mask(value, column: column)
                } else if plan.masks, column == nil {
                    outcome = .null  // more values than described: fail closed
                }
                switch outcome {
                case .keep:
                    if out != nil {
                        out!.writeInteger(Int32(length))
                        if length > 0 { out!.writeBytes(value) }
                    }
                    if sampling { sampleRow.append(length < 0 ? nil : ResultCapture.render(value, format: format)) }
                case .null:
                    out!.writeInteger(Int32(-1))
                    if sampling { sampleRow.append(nil) }
                case .bytes(let bytes):
                    out!.writeInteger(Int32(bytes.count))
                    out!.writeBytes(bytes)
                    if sampling { sampleRow.append(bytes.withUnsafeBytes { ResultCapture.render($0, format: format) }) }
                }
            }
            capture?.digest.add(row: scratch)
            if sampling { capture?.sample.append(sampleRow) }
            if out != nil { out!.setInteger(Int32(out!.readableBytes - 1), at: out!.readerIndex + 1) }
            return .success(out)
        }
        return try result.get()
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
