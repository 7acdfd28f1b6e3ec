import CustosPostgres
import CustosSQL
import CustosServer
import NIOCore

/// What each fuzz target feeds its input to (scripts/fuzz, docs/fuzzing.md). A target never
/// stops on bad input: errors are the expected answer; a trap, a hang or a failed round trip is
/// a finding.
enum FuzzTarget: String, CaseIterable {
    /// Client bytes after startup: frames, then each frame as a frontend message, round-tripped.
    case frontend
    /// Server bytes: frames, then each as a backend message, round-tripped.
    case backend
    /// The startup phase: startup packets, then a hostile server's authentication requests.
    case startup
    /// Statement analysis: the text as SQL through the parser, literal uses and COPY reading.
    case sql
    /// The configuration loader.
    case config

    static let analyzer = PostgresAnalyzer(cacheCapacity: 0)

    func run(_ data: [UInt8]) {
        switch self {
        case .frontend: Self.frames(data, types: MessageType.frontend) { frame in
                guard let message = try? FrontendMessage.decode(frame) else { return }
                var buffer = ByteBuffer()
                message.encode(into: &buffer)
                Self.roundTrip(buffer, types: MessageType.frontend) { try FrontendMessage.decode($0) == message }
            }
        case .backend: Self.frames(data, types: MessageType.backend) { frame in
                guard let message = try? BackendMessage.decode(frame) else { return }
                var buffer = ByteBuffer()
                message.encode(into: &buffer)
                Self.roundTrip(buffer, types: MessageType.backend) { try BackendMessage.decode($0) == message }
            }
        case .startup:
            var buffer = ByteBuffer(bytes: data)
            while let packet = try? StartupPacket.decode(&buffer) {
                var encoded = ByteBuffer()
                packet.encode(into: &encoded)
                precondition((try? StartupPacket.decode(&encoded)) == packet, "a startup packet does not survive a round trip")
            }
            var authenticator = BackendAuthenticator(user: "custos", password: "secret")
            Self.frames(data, types: MessageType.backend) { frame in
                guard case .authentication(let request)? = try? BackendMessage.decode(frame) else { return }
                _ = try? authenticator.handle(request, nonce: { "rOprNGfwEbeRWgbNEkqO" })
            }
        case .sql:
            let text = String(decoding: data, as: UTF8.self)
            _ = Self.analyzer.analyze(text)
            _ = Self.analyzer.literalUses(text)
            _ = Self.analyzer.copyInfo(text)
        case .config:
            _ = try? CustosConfig.parse(yaml: String(decoding: data, as: UTF8.self), baseDirectory: "/nonexistent")
        }
    }

    /// Splits `data` into frames as a session's decoder would, stopping at the first error.
    static func frames(_ data: [UInt8], types: Set<UInt8>, _ body: (PostgresFrame) -> Void) {
        let decoder = FrameDecoder(maxMessageSize: 1 << 20, allowedTypes: types)
        var buffer = ByteBuffer(bytes: data)
        while let frame = try? decoder.decodeFrame(&buffer) { body(frame) }
    }

    /// A decoded message, encoded again, must decode to itself.
    static func roundTrip(_ encoded: ByteBuffer, types: Set<UInt8>, equal: (PostgresFrame) throws -> Bool) {
        var buffer = encoded
        let decoder = FrameDecoder(maxMessageSize: Int.max, allowedTypes: types)
        guard let frame = try? decoder.decodeFrame(&buffer) else { preconditionFailure("an encoded message is not a frame") }
        precondition((try? equal(frame)) == true, "a message does not survive a round trip")
    }
}
