import NIOCore

/// One message as it travels: its type byte and body (without type and length), plus the raw
/// bytes so a proxy can forward it untouched, without re-encoding.
public struct PostgresFrame: Sendable, Equatable {
    /// The type byte.
    public var type: UInt8
    /// The body, after the length field.
    public var body: ByteBuffer
    /// Type, length and body exactly as received.
    public var raw: ByteBuffer

    public init(type: UInt8, body: ByteBuffer, raw: ByteBuffer) {
        self.type = type
        self.body = body
        self.raw = raw
    }

    /// Builds a frame from a body (for tests and synthesized messages).
    public init(type: UInt8, body: ByteBuffer) {
        var raw = ByteBuffer()
        raw.writeInteger(type)
        raw.writeInteger(Int32(body.readableBytes + 4))
        var copy = body
        raw.writeBuffer(&copy)
        self.init(type: type, body: body, raw: raw)
    }
}

/// Splits a byte stream into ``PostgresFrame``s. It never copies: frames are slices of the input.
public struct FrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = PostgresFrame

    /// Largest message accepted, in bytes including the length field.
    public let maxMessageSize: Int
    /// Type bytes this side may receive; anything else is a protocol violation.
    public let allowedTypes: Set<UInt8>

    public init(maxMessageSize: Int, allowedTypes: Set<UInt8>) {
        self.maxMessageSize = maxMessageSize
        self.allowedTypes = allowedTypes
    }

    /// Decodes one frame from `buffer` if a whole one is there.
    public func decodeFrame(_ buffer: inout ByteBuffer) throws(WireError) -> PostgresFrame? {
        guard let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        guard allowedTypes.contains(type) else {
            throw WireError(.unknownMessageType, type: type, raw: buffer.getSlice(at: buffer.readerIndex, length: min(buffer.readableBytes, 64)))
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex + 1, as: Int32.self) else { return nil }
        guard length >= 4 else { throw WireError(.lengthTooSmall, type: type) }
        guard Int(length) <= maxMessageSize else { throw WireError(.lengthTooLarge, type: type) }
        guard buffer.readableBytes >= Int(length) + 1 else { return nil }
        let raw = buffer.readSlice(length: Int(length) + 1)!
        let body = raw.getSlice(at: raw.readerIndex + 5, length: Int(length) - 4)!
        return PostgresFrame(type: type, body: body, raw: raw)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try decodeFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // Bytes of an incomplete message at EOF are simply dropped: the peer went away.
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}

/// Message type bytes.
public enum MessageType {
    /// Types a client may send after startup.
    public static let frontend: Set<UInt8> = Set("BCdcfDEHFPpQSX".utf8)
    /// Types a server may send.
    public static let backend: Set<UInt8> = Set("RK23CdcGHWDIEVvnNAtS1sZT".utf8)
}
