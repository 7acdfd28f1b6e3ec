/// A string that is equal to another, and hashes, by its UTF-8 bytes alone.
///
/// Swift's `String` equality is Unicode canonical equivalence: `"sé"` composed (U+00E9) and
/// decomposed (`e` + U+0301) compare equal. PostgreSQL compares names and text byte for byte, so
/// to it they are two prepared statements, two portals, two tables. Whatever stands for one of
/// them on the gateway's side (a map from a statement name to what it was analysed as, a cache
/// keyed by text) must be keyed by this, or one name could take the other's analysis.
public struct ExactText: Hashable, Sendable, CustomStringConvertible {
    public let text: String

    public init(_ text: String) {
        self.text = text
    }

    public static func == (lhs: ExactText, rhs: ExactText) -> Bool {
        lhs.text.utf8.elementsEqual(rhs.text.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        let hashed: Void? = text.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if hashed == nil {
            for byte in text.utf8 { hasher.combine(byte) }
        }
    }

    public var description: String { text }
}

extension Dictionary where Key == ExactText {
    /// The value under `text`, compared byte for byte.
    public subscript(exact text: String) -> Value? {
        get { self[ExactText(text)] }
        set { self[ExactText(text)] = newValue }
    }
}
