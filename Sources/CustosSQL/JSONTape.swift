#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A flat, index-linked view of one JSON document (libpg_query's parse tree), built in one pass
/// over the bytes without materialising dictionaries or strings.
///
/// Why not JSONSerialization: decoding a parse tree into `[String: Any]` costs more than the parse
/// itself (NOTES.md), and the analysis only ever needs a few fields per node. The tape keeps byte
/// ranges; strings are decoded only when the walker asks for them. The parser is iterative, so a
/// deeply nested tree (`1+1+1+…` nests one level per operator) cannot overflow the stack here.
///
/// Entries are in document order; a container's descendants follow it, and `end` is the index just
/// past its last descendant, so siblings are reached by jumping to `end`.
struct JSONTape {
    enum Tag: UInt8 {
        case object, array, string, number, bool, null
    }

    struct Entry {
        var tag: Tag
        /// For strings: the contents contain backslash escapes. For bools: the value.
        var flag: Bool
        /// The member name's byte range when this entry is an object member, else `keyStart` is -1.
        var keyStart: Int32
        var keyLength: Int32
        /// Strings: the contents between the quotes; numbers: the literal.
        var start: Int32
        var length: Int32
        /// Index just past this entry's last descendant.
        var end: Int32
    }

    let bytes: UnsafeBufferPointer<UInt8>
    let entries: [Entry]

    /// Parses `bytes`; nil when they are not one well-formed JSON value (never expected from
    /// libpg_query, but the caller then fails closed).
    init?(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard bytes.count < Int(Int32.max), let entries = Self.parse(bytes) else { return nil }
        self.bytes = bytes
        self.entries = entries
    }

    // MARK: Reading

    @inline(__always) func tag(_ entry: Int32) -> Tag { entries[Int(entry)].tag }

    /// The first child of a container (meaningful only when `firstChild < end`).
    @inline(__always) func firstChild(_ entry: Int32) -> Int32 { entry + 1 }

    /// Index just past `entry` and its descendants: its next sibling, if any.
    @inline(__always) func next(_ entry: Int32) -> Int32 { entries[Int(entry)].end }

    @inline(__always) func end(_ entry: Int32) -> Int32 { entries[Int(entry)].end }

    /// Calls `body` with each child of a container (object members or array items), in order.
    @inline(__always) func forEachChild(_ container: Int32, _ body: (Int32) -> Void) {
        var child = container + 1
        let stop = end(container)
        while child < stop {
            body(child)
            child = next(child)
        }
    }

    /// Whether `entry`'s member name equals `key` (byte comparison, no allocation).
    @inline(__always) func keyEquals(_ entry: Int32, _ key: StaticString) -> Bool {
        let item = entries[Int(entry)]
        guard item.keyStart >= 0, Int(item.keyLength) == key.utf8CodeUnitCount else { return false }
        return memcmp(bytes.baseAddress! + Int(item.keyStart), key.utf8Start, key.utf8CodeUnitCount) == 0
    }

    /// The member name of `entry` ("" when it is not an object member).
    func key(_ entry: Int32) -> String {
        let item = entries[Int(entry)]
        guard item.keyStart >= 0 else { return "" }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[Int(item.keyStart)..<Int(item.keyStart + item.keyLength)]), as: UTF8.self)
    }

    /// The value of member `key` of `object`, or nil when absent (libpg_query omits default values:
    /// false, 0, empty lists and null pointers never appear).
    func member(_ object: Int32, _ key: StaticString) -> Int32? {
        guard tag(object) == .object else { return nil }
        var child = object + 1
        let stop = end(object)
        while child < stop {
            if keyEquals(child, key) { return child }
            child = next(child)
        }
        return nil
    }

    /// The decoded string value of `entry`, or nil when it is not a string.
    func string(_ entry: Int32) -> String? {
        let item = entries[Int(entry)]
        guard item.tag == .string else { return nil }
        let raw = UnsafeBufferPointer(rebasing: bytes[Int(item.start)..<Int(item.start + item.length)])
        return item.flag ? Self.unescape(raw) : String(decoding: raw, as: UTF8.self)
    }

    func string(_ object: Int32, _ key: StaticString) -> String? {
        member(object, key).flatMap(string)
    }

    /// A boolean member; absent means false, as libpg_query omits false.
    func bool(_ object: Int32, _ key: StaticString) -> Bool {
        guard let entry = member(object, key) else { return false }
        let item = entries[Int(entry)]
        return item.tag == .bool && item.flag
    }

    /// An integer member; absent means 0.
    func int(_ object: Int32, _ key: StaticString) -> Int {
        guard let entry = member(object, key), entries[Int(entry)].tag == .number else { return 0 }
        let item = entries[Int(entry)]
        var value = 0
        var negative = false
        for byte in bytes[Int(item.start)..<Int(item.start + item.length)] {
            switch byte {
            case UInt8(ascii: "-"): negative = true
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value &* 10 &+ Int(byte - UInt8(ascii: "0"))
            default: return negative ? -value : value  // fraction or exponent: not an int field
            }
        }
        return negative ? -value : value
    }

    /// A parse-tree node is wrapped as `{"TypeName": {fields}}`: an object with exactly one member
    /// whose name starts with an upper-case letter (fields are lower-case). Returns the type name
    /// and the fields object, or nil for an inline struct (whose type the parent field implies).
    func wrappedNode(_ entry: Int32) -> (type: String, fields: Int32)? {
        wrappedMember(entry).map { (key($0), $0) }
    }

    /// The single member of a wrapped node (its key is the type name, its value the fields), or nil.
    @inline(__always) func wrappedMember(_ entry: Int32) -> Int32? {
        let item = entries[Int(entry)]
        guard item.tag == .object, item.end > entry + 1 else { return nil }
        let member = entry + 1
        guard next(member) == item.end, entries[Int(member)].tag == .object else { return nil }
        let first = bytes[Int(entries[Int(member)].keyStart)]
        guard first >= UInt8(ascii: "A"), first <= UInt8(ascii: "Z") else { return nil }
        return member
    }

    // MARK: Parsing

    private enum State { case value, afterValue, keyOrEnd, key, valueOrEnd }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> [Entry]? {
        var entries: [Entry] = []
        entries.reserveCapacity(bytes.count / 12 + 8)
        var open: [Int32] = []
        open.reserveCapacity(64)
        var position = 0
        let count = bytes.count
        var keyStart: Int32 = -1
        var keyLength: Int32 = 0
        var state = State.value

        func skipWhitespace() {
            while position < count {
                switch bytes[position] {
                case 0x20, 0x09, 0x0A, 0x0D: position += 1
                default: return
                }
            }
        }
        /// Scans a string starting at the opening quote; returns (start, length, escaped).
        func scanString() -> (Int32, Int32, Bool)? {
            guard position < count, bytes[position] == UInt8(ascii: "\"") else { return nil }
            let start = position + 1
            var cursor = start
            var escaped = false
            while cursor < count {
                let byte = bytes[cursor]
                if byte == UInt8(ascii: "\"") {
                    position = cursor + 1
                    return (Int32(start), Int32(cursor - start), escaped)
                }
                if byte == UInt8(ascii: "\\") {
                    escaped = true
                    cursor += 2
                } else {
                    cursor += 1
                }
            }
            return nil
        }
        func literal(_ word: StaticString) -> Bool {
            let length = word.utf8CodeUnitCount
            guard position + length <= count, memcmp(bytes.baseAddress! + position, word.utf8Start, length) == 0 else { return false }
            position += length
            return true
        }
        func close() {
            let index = Int(open.removeLast())
            entries[index].end = Int32(entries.count)
            position += 1
            state = .afterValue
        }

        while true {
            skipWhitespace()
            switch state {
            case .keyOrEnd, .key:
                guard position < count else { return nil }
                if state == .keyOrEnd, bytes[position] == UInt8(ascii: "}") {
                    close()
                    continue
                }
                guard let (start, length, _) = scanString() else { return nil }
                skipWhitespace()
                guard position < count, bytes[position] == UInt8(ascii: ":") else { return nil }
                position += 1
                keyStart = start
                keyLength = length
                state = .value
            case .valueOrEnd:
                guard position < count else { return nil }
                if bytes[position] == UInt8(ascii: "]") {
                    close()
                } else {
                    state = .value
                }
            case .value:
                guard position < count else { return nil }
                let index = Int32(entries.count)
                var entry = Entry(tag: .null, flag: false, keyStart: keyStart, keyLength: keyLength, start: 0, length: 0, end: index + 1)
                keyStart = -1
                keyLength = 0
                switch bytes[position] {
                case UInt8(ascii: "{"):
                    entry.tag = .object
                    open.append(index)
                    position += 1
                    state = .keyOrEnd
                case UInt8(ascii: "["):
                    entry.tag = .array
                    open.append(index)
                    position += 1
                    state = .valueOrEnd
                case UInt8(ascii: "\""):
                    guard let (start, length, escaped) = scanString() else { return nil }
                    entry.tag = .string
                    entry.start = start
                    entry.length = length
                    entry.flag = escaped
                    state = .afterValue
                case UInt8(ascii: "t"):
                    guard literal("true") else { return nil }
                    entry.tag = .bool
                    entry.flag = true
                    state = .afterValue
                case UInt8(ascii: "f"):
                    guard literal("false") else { return nil }
                    entry.tag = .bool
                    state = .afterValue
                case UInt8(ascii: "n"):
                    guard literal("null") else { return nil }
                    state = .afterValue
                default:
                    let start = position
                    scan: while position < count {
                        switch bytes[position] {
                        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."),
                            UInt8(ascii: "e"), UInt8(ascii: "E"):
                            position += 1
                        default: break scan
                        }
                    }
                    guard position > start else { return nil }
                    entry.tag = .number
                    entry.start = Int32(start)
                    entry.length = Int32(position - start)
                    state = .afterValue
                }
                entries.append(entry)
            case .afterValue:
                guard let top = open.last else {
                    return position == count ? entries : nil
                }
                guard position < count else { return nil }
                let inObject = entries[Int(top)].tag == .object
                switch bytes[position] {
                case UInt8(ascii: ","):
                    position += 1
                    state = inObject ? .key : .value
                case UInt8(ascii: "}") where inObject: close()
                case UInt8(ascii: "]") where !inObject: close()
                default: return nil
                }
            }
        }
    }

    /// Decodes JSON escapes (`\"`, `\\`, `\n`, `\uXXXX` with surrogate pairs, …); malformed
    /// escapes become U+FFFD rather than failing, since only names are ever read.
    static func unescape(_ raw: UnsafeBufferPointer<UInt8>) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(raw.count)
        var index = 0
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var value: UInt32 = 0
            for byte in raw[at..<at + 4] {
                let digit: UInt32
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
                default: return nil
                }
                value = value << 4 | digit
            }
            return value
        }
        func append(scalar value: UInt32) {
            let scalar = Unicode.Scalar(value) ?? "\u{FFFD}"
            output.append(contentsOf: Array(String(Character(scalar)).utf8))
        }
        while index < raw.count {
            let byte = raw[index]
            guard byte == UInt8(ascii: "\\"), index + 1 < raw.count else {
                output.append(byte)
                index += 1
                continue
            }
            let escape = raw[index + 1]
            index += 2
            switch escape {
            case UInt8(ascii: "n"): output.append(0x0A)
            case UInt8(ascii: "t"): output.append(0x09)
            case UInt8(ascii: "r"): output.append(0x0D)
            case UInt8(ascii: "b"): output.append(0x08)
            case UInt8(ascii: "f"): output.append(0x0C)
            case UInt8(ascii: "u"):
                guard let high = hex4(index) else {
                    append(scalar: 0xFFFD)
                    continue
                }
                index += 4
                if (0xD800..<0xDC00).contains(high), index + 6 <= raw.count, raw[index] == UInt8(ascii: "\\"),
                    raw[index + 1] == UInt8(ascii: "u"), let low = hex4(index + 2), (0xDC00..<0xE000).contains(low)
                {
                    index += 6
                    append(scalar: 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                } else {
                    append(scalar: high)
                }
            default: output.append(escape)  // \" \\ \/ and anything else: the character itself
            }
        }
        return String(decoding: output, as: UTF8.self)
    }
}
