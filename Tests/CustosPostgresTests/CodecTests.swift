import NIOCore
import Testing

@testable import CustosPostgres

@Suite("Wire codec")
struct CodecTests {
    static let frontendDecoder = FrameDecoder(maxMessageSize: 1 << 20, allowedTypes: MessageType.frontend)
    static let backendDecoder = FrameDecoder(maxMessageSize: 1 << 20, allowedTypes: MessageType.backend)

    @Test("every frontend message round-trips", arguments: MessageSamples.frontend.indices)
    func frontendRoundTrip(index: Int) throws {
        let message = MessageSamples.frontend[index]
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        let frame = try #require(try Self.frontendDecoder.decodeFrame(&buffer))
        #expect(buffer.readableBytes == 0)
        #expect(frame.type == message.type)
        #expect(try FrontendMessage.decode(frame) == message)
    }

    @Test("every backend message round-trips", arguments: MessageSamples.backend.indices)
    func backendRoundTrip(index: Int) throws {
        let message = MessageSamples.backend[index]
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        let frame = try #require(try Self.backendDecoder.decodeFrame(&buffer))
        #expect(buffer.readableBytes == 0)
        #expect(try BackendMessage.decode(frame) == message)
    }

    @Test("every startup packet round-trips", arguments: MessageSamples.startup.indices)
    func startupRoundTrip(index: Int) throws {
        let packet = MessageSamples.startup[index]
        var buffer = ByteBuffer()
        packet.encode(into: &buffer)
        #expect(try StartupPacket.decode(&buffer) == packet)
        #expect(buffer.readableBytes == 0)
    }

    @Test("a client stream split at every byte boundary decodes to the same messages")
    func clientStreamSplits() throws {
        var stream = ByteBuffer()
        MessageSamples.startup[3].encode(into: &stream)
        for message in MessageSamples.frontend { message.encode(into: &stream) }
        let expected = try Self.decodeClient([stream])
        #expect(expected.count == MessageSamples.frontend.count + 1)
        for split in 1..<stream.readableBytes {
            let first = stream.getSlice(at: 0, length: split)!
            let second = stream.getSlice(at: split, length: stream.readableBytes - split)!
            #expect(try Self.decodeClient([first, second]) == expected, "split at \(split)")
        }
    }

    @Test("a server stream split at every byte boundary decodes to the same messages")
    func backendStreamSplits() throws {
        var stream = ByteBuffer()
        for message in MessageSamples.backend { message.encode(into: &stream) }
        for split in 0..<stream.readableBytes {
            var decoded: [BackendMessage] = []
            var pending = ByteBuffer()
            for var chunk in [stream.getSlice(at: 0, length: split)!, stream.getSlice(at: split, length: stream.readableBytes - split)!] {
                pending.writeBuffer(&chunk)
                while let frame = try Self.backendDecoder.decodeFrame(&pending) { decoded.append(try BackendMessage.decode(frame)) }
            }
            #expect(decoded == MessageSamples.backend, "split at \(split)")
        }
    }

    @Test("lengths below 4 and above the maximum are refused")
    func badLengths() throws {
        var small = ByteBuffer(bytes: [UInt8(ascii: "Q"), 0, 0, 0, 3])
        #expect(throws: WireError(.lengthTooSmall, type: UInt8(ascii: "Q"))) { try Self.frontendDecoder.decodeFrame(&small) }
        let tight = FrameDecoder(maxMessageSize: 100, allowedTypes: MessageType.frontend)
        var large = ByteBuffer(bytes: [UInt8(ascii: "Q"), 0, 0, 0, 101])
        #expect(throws: WireError(.lengthTooLarge, type: UInt8(ascii: "Q"))) { try tight.decodeFrame(&large) }
        var startup = ByteBuffer(bytes: [0, 0, 0, 4])
        #expect(throws: WireError(.lengthTooSmall)) { try StartupPacket.decode(&startup) }
        var huge = ByteBuffer(bytes: [0, 1, 0, 0, 0, 3, 0, 0])
        #expect(throws: WireError(.lengthTooLarge)) { try StartupPacket.decode(&huge) }
    }

    @Test("an unknown message type is refused, with its bytes attached")
    func unknownType() throws {
        var buffer = ByteBuffer(bytes: [UInt8(ascii: "!"), 0, 0, 0, 4])
        let error = try #require(throws: WireError.self) { try Self.frontendDecoder.decodeFrame(&buffer) }
        #expect(error.reason == .unknownMessageType)
        #expect(error.raw?.readableBytes == 5)
        // A backend-only type sent by a client is unknown to the client side.
        var backendType = ByteBuffer(bytes: [UInt8(ascii: "Z"), 0, 0, 0, 5, UInt8(ascii: "I")])
        #expect(throws: WireError.self) { try Self.frontendDecoder.decodeFrame(&backendType) }
    }

    @Test("truncated and overlong bodies are refused")
    func malformedBodies() throws {
        let execute = PostgresFrame(type: UInt8(ascii: "E"), body: ByteBuffer(bytes: [0, 0, 0]))
        #expect(throws: WireError.self) { try FrontendMessage.decode(execute) }
        let sync = PostgresFrame(type: UInt8(ascii: "S"), body: ByteBuffer(bytes: [1]))
        #expect(throws: WireError(.trailingBytes, type: UInt8(ascii: "S"))) { try FrontendMessage.decode(sync) }
        let query = PostgresFrame(type: UInt8(ascii: "Q"), body: ByteBuffer(string: "no terminator"))
        #expect(throws: WireError(.badString, type: UInt8(ascii: "Q"))) { try FrontendMessage.decode(query) }
        var version2 = ByteBuffer(bytes: [0, 0, 0, 8, 0, 2, 0, 0])
        #expect(throws: WireError(.unsupportedProtocol)) { try StartupPacket.decode(&version2) }
    }

    @Test("statement and portal names that are not UTF-8 are refused; other names keep their bytes")
    func names() throws {
        let bad: [UInt8] = [UInt8(ascii: "s"), 0xFF, 0]
        let bodies: [(UInt8, [UInt8])] = [
            (UInt8(ascii: "P"), bad + Array("SELECT 1".utf8) + [0, 0, 0]),
            (UInt8(ascii: "B"), bad + [0, 0, 0, 0, 0, 0, 0]),
            (UInt8(ascii: "B"), [0] + bad + [0, 0, 0, 0, 0, 0]),
            (UInt8(ascii: "E"), bad + [0, 0, 0, 0]),
            (UInt8(ascii: "C"), [UInt8(ascii: "S")] + bad),
            (UInt8(ascii: "D"), [UInt8(ascii: "P")] + bad),
        ]
        for (type, body) in bodies {
            let frame = PostgresFrame(type: type, body: ByteBuffer(bytes: body))
            #expect(throws: WireError(.badName, type: type)) { try FrontendMessage.decode(frame) }
        }
        // SQL text must be UTF-8 too (the analysis must read the bytes the backend runs).
        let query = PostgresFrame(type: UInt8(ascii: "Q"), body: ByteBuffer(bytes: Array("SELECT '".utf8) + [0xFF, UInt8(ascii: "'"), 0]))
        #expect(throws: WireError(.badText, type: UInt8(ascii: "Q"))) { try FrontendMessage.decode(query) }
        let parse = PostgresFrame(type: UInt8(ascii: "P"), body: ByteBuffer(bytes: [0] + Array("SELECT $".utf8) + [0xF0, 0x90, 0x80, UInt8(ascii: "$"), 0, 0, 0]))
        #expect(throws: WireError(.badText, type: UInt8(ascii: "P"))) { try FrontendMessage.decode(parse) }
        // A name decomposed stays decomposed: its bytes, not a canonically equal spelling.
        let decomposed = Array("se\u{301}".utf8)
        let frame = PostgresFrame(type: UInt8(ascii: "E"), body: ByteBuffer(bytes: decomposed + [0, 0, 0, 0, 0]))
        guard case .execute(let portal, _) = try FrontendMessage.decode(frame) else { Issue.record("not an Execute"); return }
        #expect(Array(portal.utf8) == decomposed)
    }

    @Test("a frame keeps its raw bytes for forwarding untouched")
    func rawBytesKept() throws {
        var buffer = ByteBuffer()
        FrontendMessage.query("SELECT 1").encode(into: &buffer)
        let original = buffer
        let frame = try #require(try Self.frontendDecoder.decodeFrame(&buffer))
        #expect(frame.raw == original)
    }

    static func decodeClient(_ chunks: [ByteBuffer]) throws -> [ClientInbound] {
        var decoder = ClientDecoder(maxMessageSize: 1 << 20)
        var pending = ByteBuffer()
        var out: [ClientInbound] = []
        for var chunk in chunks {
            pending.writeBuffer(&chunk)
            while let inbound = try decoder.next(&pending) { out.append(inbound) }
        }
        return out
    }
}
