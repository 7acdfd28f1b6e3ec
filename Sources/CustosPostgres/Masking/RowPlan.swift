import CustosCore
import NIOCore

/// What happens to each column of a result: decided once per RowDescription, applied to every
/// DataRow. Masked values stay valid for the client's decoder: text-like types get masked text,
/// JSON gets a JSON string, and every other type (numbers, dates, bytea, arrays, …) becomes NULL.
struct RowPlan {
    enum Action: Equatable {
        case keep
        /// No rule names the column: content detectors look at its values.
        case detect
        case mask(MaskingStrategy)
    }

    /// How a type's values can be masked.
    enum TypeClass {
        case text, json, jsonb, other
    }

    /// Plain values only (no references), so the per-row loop copies columns without reference counting.
    struct Column {
        var typeOID: UInt32
        var format: Int16
        var typeClass: TypeClass
        var action: Action
    }

    var columns: [Column]
    /// The columns' names, as described (for the record).
    var names: [String]
    /// False when every column is kept: rows pass untouched.
    var masks: Bool

    static let empty = RowPlan(columns: [], names: [], masks: false)

    /// The plan for a RowDescription under `profile`; `table` gives a column's origin from the
    /// catalog (nil when the table could not be resolved: its columns are then redacted, failing closed).
    static func make(_ columns: [BackendMessage.Column], profile: MaskingProfile, table: (UInt32) -> Catalog.Table?) -> RowPlan {
        var masks = false
        let planned = columns.map { column in
            let typeClass = Self.typeClass(column.typeOID, format: column.format)
            var action = Action.keep
            if !profile.isEmpty {
                var strategy: MaskingStrategy?
                if column.tableOID != 0, column.attribute > 0, profile.hasColumnRules {
                    if let origin = table(column.tableOID), let attribute = origin.column(column.attribute) {
                        strategy = profile.strategy(schema: origin.schema, table: origin.name, column: attribute)
                        if strategy == nil, attribute != column.name { strategy = profile.strategy(schema: nil, table: nil, column: column.name) }
                    } else {
                        strategy = .redact  // unknown origin: fail closed
                    }
                } else {
                    strategy = profile.strategy(schema: nil, table: nil, column: column.name)
                }
                if let strategy {
                    action = .mask(strategy)
                } else if !profile.detectors.isEmpty, typeClass != .other || column.format == 0 {
                    action = .detect
                }
            }
            if action != .keep { masks = true }
            return Column(typeOID: column.typeOID, format: column.format, typeClass: typeClass, action: action)
        }
        return RowPlan(columns: planned, names: columns.map(\.name), masks: masks)
    }

    /// A plan for unnamed columns of unknown type and format (no description reached Custos):
    /// every value becomes NULL, which any decoder accepts.
    static func unknown(count: Int) -> RowPlan {
        RowPlan(
            columns: Array(repeating: Column(typeOID: 0, format: 1, typeClass: .other, action: .mask(.null)), count: count),
            names: Array(repeating: "?", count: count), masks: true)
    }

    static func typeClass(_ oid: UInt32, format: Int16) -> TypeClass {
        switch oid {
        case 25, 1043, 1042, 19, 705, 142: return .text  // text, varchar, bpchar, name, unknown, xml
        case 114: return .json
        case 3802: return .jsonb
        // Enums, citext and other extension types read as strings in text format; their binary
        // form is not ours to rewrite.
        case 16384...: return format == 0 ? .text : .other
        default: return .other
        }
    }
}

/// Masks single values per column plan.
struct ValueMasker {
    enum Outcome {
        case keep
        case null
        case bytes([UInt8])
    }

    let masker: Masker
    let detectors: [Detector: MaskingStrategy]

    func mask(_ value: UnsafeRawBufferPointer, column: RowPlan.Column) -> Outcome {
        switch column.action {
        case .keep:
            return .keep
        case .mask(let strategy):
            switch column.typeClass {
            case .text:
                return masker.mask(value, strategy: strategy).map(Outcome.bytes) ?? .null
            case .json, .jsonb:
                let binaryJSONB = column.typeClass == .jsonb && column.format == 1
                let body = binaryJSONB && value.count > 0 ? UnsafeRawBufferPointer(rebasing: value[1...]) : value
                guard let masked = masker.mask(body, strategy: strategy) else { return .null }
                return .bytes((binaryJSONB ? [1] : []) + Self.jsonString(masked))
            case .other:
                return .null
            }
        case .detect:
            switch masker.maskDetected(value, strategies: detectors) {
            case .unchanged: return .keep
            case .null: return .null
            case .replaced(let bytes):
                switch column.typeClass {
                case .text: return .bytes(bytes)
                case .json, .jsonb:
                    // A replacement outside a JSON string would break the document: the whole
                    // value becomes one JSON string instead.
                    let binaryJSONB = column.typeClass == .jsonb && column.format == 1
                    let text = binaryJSONB && bytes.count > 0 ? Array(bytes.dropFirst()) : bytes
                    return .bytes((binaryJSONB ? [1] : []) + Self.jsonString(text))
                case .other: return .null
                }
            }
        }
    }

    /// `bytes` as a JSON string literal.
    static func jsonString(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "\"")]
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 15)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
        return out
    }
}
