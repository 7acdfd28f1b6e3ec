/// Writes canonical JSON (``CanonicalJSON``'s serialization) straight to bytes, without building a
/// tree first: for the payloads written on every statement's path, where building dictionaries
/// and sorting their keys cost more than the writing.
///
/// The caller gives each object's members in canonical order (UTF-8 byte order of the keys);
/// debug builds check it. Nested values may still be ``CanonicalJSON`` trees.
public struct CanonicalJSONWriter {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8] = []
    /// Whether the next value or member follows another in the same container.
    private var needsComma = false
    #if DEBUG
    /// The last key of each open object, innermost last.
    private var lastKeys: [[UInt8]?] = []
    #endif

    public init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
        #if DEBUG
        lastKeys.append(nil)
        #endif
    }

    public mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
        #if DEBUG
        lastKeys.removeLast()
        #endif
    }

    public mutating func beginArray() {
        separate()
        bytes.append(UInt8(ascii: "["))
        needsComma = false
    }

    public mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    /// The next member's key; its value follows.
    public mutating func key(_ key: StaticString) {
        separate()
        // withUTF8Buffer, not utf8Start: a one-character literal may be stored as a scalar.
        key.withUTF8Buffer { utf8 in
            #if DEBUG
            let previous = lastKeys[lastKeys.count - 1]
            assert(previous.map { $0.lexicographicallyPrecedes(utf8) } ?? true, "canonical JSON keys out of order")
            lastKeys[lastKeys.count - 1] = Array(utf8)
            #endif
            bytes.append(UInt8(ascii: "\""))
            bytes.append(contentsOf: utf8)  // keys are plain ASCII: nothing to escape
            bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        needsComma = false
    }

    public mutating func string(_ value: String) {
        separate()
        CanonicalJSON.writeString(value, into: &bytes)
        needsComma = true
    }

    public mutating func string(_ value: String?) {
        if let value { string(value) } else { null() }
    }

    public mutating func int(_ value: Int64) {
        separate()
        CanonicalJSON.writeInt(value, into: &bytes)
        needsComma = true
    }

    public mutating func int(_ value: Int?) {
        if let value { int(Int64(value)) } else { null() }
    }

    public mutating func bool(_ value: Bool) {
        separate()
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
        needsComma = true
    }

    public mutating func null() {
        separate()
        bytes.append(contentsOf: "null".utf8)
        needsComma = true
    }

    /// An object of two string members, keys in canonical order.
    public mutating func object(_ first: StaticString, _ a: String?, _ second: StaticString, _ b: String?) {
        beginObject()
        key(first)
        string(a)
        key(second)
        string(b)
        endObject()
    }

    /// A value given as a tree.
    public mutating func value(_ value: CanonicalJSON) {
        separate()
        value.write(into: &bytes)
        needsComma = true
    }

    private mutating func separate() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
    }
}
