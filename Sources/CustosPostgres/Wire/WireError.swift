import NIOCore

/// A PostgreSQL protocol violation by a peer. Carries the message type and the raw bytes so the
/// failure can be reproduced; `description` omits the bytes, which may hold data.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable {
        case lengthTooSmall = "message length below 4"
        case lengthTooLarge = "message length above the configured maximum"
        case unknownMessageType = "unknown message type"
        case truncated = "message shorter than its fields"
        case trailingBytes = "message longer than its fields"
        case badString = "string not terminated or not UTF-8"
        case badName = "statement or portal name not UTF-8"
        case badText = "SQL text not UTF-8"
        case unsupportedProtocol = "unsupported protocol version"
        case unexpectedMessage = "message not valid in this state"
    }

    public var reason: Reason
    /// The message type byte, when there is one.
    public var messageType: UInt8?
    /// The message bytes that failed to decode.
    public var raw: ByteBuffer?

    public init(_ reason: Reason, type: UInt8? = nil, raw: ByteBuffer? = nil) {
        self.reason = reason
        self.messageType = type
        self.raw = raw
    }

    public var description: String {
        if let messageType, messageType >= 0x20, messageType < 0x7F {
            return "\(reason.rawValue) (message '\(Character(Unicode.Scalar(messageType)))')"
        }
        return reason.rawValue
    }
}

extension ByteBuffer {
    /// Reads a NUL-terminated UTF-8 string.
    mutating func readCString(type: UInt8?) throws(WireError) -> String {
        guard let nul = self.readableBytesView.firstIndex(of: 0) else { throw WireError(.badString, type: type) }
        let length = nul - self.readerIndex
        guard let text = self.readString(length: length) else { throw WireError(.badString, type: type) }
        self.moveReaderIndex(forwardBy: 1)
        return text
    }

    /// Reads a NUL-terminated prepared-statement or portal name, which must be valid UTF-8: the
    /// gateway keys what it knows of a name by its decoded text, and lossy decoding would make two
    /// names one (both would read as U+FFFD), so such a name is a protocol violation.
    mutating func readName(type: UInt8?) throws(WireError) -> String {
        guard let nul = self.readableBytesView.firstIndex(of: 0) else { throw WireError(.badString, type: type) }
        let bytes = self.readableBytesView[self.readerIndex..<nul]
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else { throw WireError(.badName, type: type) }
        self.moveReaderIndex(to: nul + 1)
        return text
    }

    /// Reads NUL-terminated SQL text, which must be valid UTF-8: the analysis must read the bytes
    /// the backend runs, and a database that does not check them (SQL_ASCII) would run bytes that
    /// lossy decoding had changed (two different dollar-quote tags read as one).
    mutating func readText(type: UInt8?) throws(WireError) -> String {
        guard let nul = self.readableBytesView.firstIndex(of: 0) else { throw WireError(.badString, type: type) }
        guard let text = String(validating: self.readableBytesView[self.readerIndex..<nul], as: UTF8.self) else {
            throw WireError(.badText, type: type)
        }
        self.moveReaderIndex(to: nul + 1)
        return text
    }

    mutating func writeCString(_ text: String) {
        self.writeString(text)
        self.writeInteger(UInt8(0))
    }

    mutating func readInt32(type: UInt8?) throws(WireError) -> Int32 {
        guard let value = self.readInteger(as: Int32.self) else { throw WireError(.truncated, type: type) }
        return value
    }

    mutating func readInt16(type: UInt8?) throws(WireError) -> Int16 {
        guard let value = self.readInteger(as: Int16.self) else { throw WireError(.truncated, type: type) }
        return value
    }

    mutating func readByte(type: UInt8?) throws(WireError) -> UInt8 {
        guard let value = self.readInteger(as: UInt8.self) else { throw WireError(.truncated, type: type) }
        return value
    }

    mutating func readBytes(_ count: Int, type: UInt8?) throws(WireError) -> ByteBuffer {
        guard count >= 0, let slice = self.readSlice(length: count) else { throw WireError(.truncated, type: type) }
        return slice
    }

    /// Reads an Int32 length followed by that many bytes; -1 means NULL.
    mutating func readLengthPrefixed(type: UInt8?) throws(WireError) -> ByteBuffer? {
        let length = try self.readInt32(type: type)
        if length == -1 { return nil }
        guard length >= 0 else { throw WireError(.truncated, type: type) }
        return try self.readBytes(Int(length), type: type)
    }

    mutating func writeLengthPrefixed(_ bytes: ByteBuffer?) {
        guard var bytes else {
            self.writeInteger(Int32(-1))
            return
        }
        self.writeInteger(Int32(bytes.readableBytes))
        self.writeBuffer(&bytes)
    }

    func expectEnd(type: UInt8?) throws(WireError) {
        if self.readableBytes != 0 { throw WireError(.trailingBytes, type: type) }
    }
}

/// Writes a typed message: type byte, Int32 length (including itself), body.
@inline(__always)
func writeMessage(_ type: UInt8, into buffer: inout ByteBuffer, body: (inout ByteBuffer) -> Void) {
    buffer.writeInteger(type)
    let lengthIndex = buffer.writerIndex
    buffer.writeInteger(Int32(0))
    body(&buffer)
    buffer.setInteger(Int32(buffer.writerIndex - lengthIndex), at: lengthIndex)
}
