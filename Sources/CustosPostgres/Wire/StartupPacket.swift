import NIOCore

/// The untyped packets a client may open a connection with.
public enum StartupPacket: Sendable, Equatable {
    case startup(version: Int32, parameters: [Parameter])
    case sslRequest
    case gssEncRequest
    case cancel(processID: Int32, secretKey: Int32)

    /// One startup parameter, in the order sent.
    public struct Parameter: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public static let protocol3: Int32 = 196_608
    static let sslCode: Int32 = 80_877_103
    static let gssCode: Int32 = 80_877_104
    static let cancelCode: Int32 = 80_877_102
    /// PostgreSQL's own limit on a startup packet.
    public static let maxLength = 10_000

    /// Decodes one packet if a whole one is buffered.
    public static func decode(_ buffer: inout ByteBuffer) throws(WireError) -> StartupPacket? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self) else { return nil }
        guard length >= 8 else { throw WireError(.lengthTooSmall) }
        guard Int(length) <= maxLength else { throw WireError(.lengthTooLarge) }
        guard buffer.readableBytes >= Int(length) else { return nil }
        var body = buffer.readSlice(length: Int(length))!
        body.moveReaderIndex(forwardBy: 4)
        let code = try body.readInt32(type: nil)
        let packet: StartupPacket
        switch code {
        case sslCode: packet = .sslRequest
        case gssCode: packet = .gssEncRequest
        case cancelCode: packet = .cancel(processID: try body.readInt32(type: nil), secretKey: try body.readInt32(type: nil))
        case protocol3:
            var parameters: [Parameter] = []
            while true {
                let name = try body.readCString(type: nil)
                if name.isEmpty { break }
                parameters.append(Parameter(name, try body.readCString(type: nil)))
            }
            packet = .startup(version: code, parameters: parameters)
        default:
            throw WireError(.unsupportedProtocol)
        }
        try body.expectEnd(type: nil)
        return packet
    }

    /// Encodes the packet with its length.
    public func encode(into buffer: inout ByteBuffer) {
        let lengthIndex = buffer.writerIndex
        buffer.writeInteger(Int32(0))
        switch self {
        case .sslRequest: buffer.writeInteger(Self.sslCode)
        case .gssEncRequest: buffer.writeInteger(Self.gssCode)
        case .cancel(let processID, let secretKey):
            buffer.writeInteger(Self.cancelCode)
            buffer.writeInteger(processID)
            buffer.writeInteger(secretKey)
        case .startup(let version, let parameters):
            buffer.writeInteger(version)
            for parameter in parameters {
                buffer.writeCString(parameter.name)
                buffer.writeCString(parameter.value)
            }
            buffer.writeInteger(UInt8(0))
        }
        buffer.setInteger(Int32(buffer.writerIndex - lengthIndex), at: lengthIndex)
    }
}

/// What the client side of the pipeline delivers: untyped startup packets until the startup
/// message proper, typed frames after it.
public enum ClientInbound: Sendable, Equatable {
    case startup(StartupPacket)
    case frame(PostgresFrame)
}

/// Decodes a client's stream. It stays in startup mode across SSLRequest/GSSENCRequest (the
/// client sends its startup message next, possibly inside TLS) and switches to typed frames after
/// the startup message.
public struct ClientDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ClientInbound

    private var inStartup = true
    private let frames: FrameDecoder

    public init(maxMessageSize: Int) {
        self.frames = FrameDecoder(maxMessageSize: maxMessageSize, allowedTypes: MessageType.frontend)
    }

    /// Decodes the next packet or frame, if a whole one is buffered.
    public mutating func next(_ buffer: inout ByteBuffer) throws(WireError) -> ClientInbound? {
        if inStartup {
            guard let packet = try StartupPacket.decode(&buffer) else { return nil }
            if case .startup = packet { inStartup = false }
            return .startup(packet)
        }
        return try frames.decodeFrame(&buffer).map(ClientInbound.frame)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let inbound = try next(&buffer) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(inbound))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
