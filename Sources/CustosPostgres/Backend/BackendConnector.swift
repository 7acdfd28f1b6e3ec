import NIOCore
import NIOPosix
import NIOSSL

/// Receives what the backend channel sees; implemented by the client session, on the same
/// event loop.
protocol BackendDelegate: AnyObject {
    func backendFrame(_ frame: PostgresFrame)
    func backendClosed()
    func backendFailed(_ error: any Error)
    func backendWritabilityChanged(_ writable: Bool)
    func backendReadComplete()
}

/// Relays backend channel events to the session. Reads are explicit (autoRead off): the session
/// asks for more only while the client keeps up, which is the proxy's backpressure.
final class BackendRelay: ChannelInboundHandler {
    typealias InboundIn = PostgresFrame

    weak var delegate: (any BackendDelegate)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        delegate?.backendFrame(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.backendReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        delegate?.backendClosed()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        delegate?.backendFailed(error)
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.backendWritabilityChanged(context.channel.isWritable)
    }
}

/// Reads the single-byte answer to an SSLRequest.
private final class SSLAnswerReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<UInt8>

    init(promise: EventLoopPromise<UInt8>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if let byte = buffer.readInteger(as: UInt8.self), buffer.readableBytes == 0 {
            promise.succeed(byte)
        } else {
            // Anything after the answer byte before the TLS handshake could be injected plaintext.
            promise.fail(BackendConnectError.tlsRefused)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(BackendConnectError.closedDuringTLS)
    }
}

enum BackendConnectError: Error, CustomStringConvertible {
    case tlsRefused
    case closedDuringTLS

    var description: String {
        switch self {
        case .tlsRefused: "backend refused TLS"
        case .closedDuringTLS: "backend closed the connection during TLS negotiation"
        }
    }
}

/// Opens the backend TCP connection (with TLS when the target asks for it) on the client's event
/// loop and installs the frame decoder and relay. Authentication is the session's business.
enum BackendConnector {
    static func connect(to target: PostgresTarget, on eventLoop: any EventLoop, relay: BackendRelay, maxMessageSize: Int) -> EventLoopFuture<any Channel> {
        let bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: false)
            .connectTimeout(.seconds(5))
        let relay = NIOLoopBound(relay, eventLoop: eventLoop)
        return bootstrap.connect(host: target.host, port: target.port).flatMap { channel in
            let secured: EventLoopFuture<Void>
            if let tlsContext = target.tlsContext {
                secured = negotiateTLS(channel: channel, context: tlsContext, host: target.host)
            } else {
                secured = eventLoop.makeSucceededVoidFuture()
            }
            return secured.flatMapThrowing {
                let decoder = FrameDecoder(maxMessageSize: maxMessageSize, allowedTypes: MessageType.backend)
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
                try channel.pipeline.syncOperations.addHandler(relay.value)
                return channel
            }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        }
    }

    private static func negotiateTLS(channel: any Channel, context: NIOSSLContext, host: String) -> EventLoopFuture<Void> {
        let answer = channel.eventLoop.makePromise(of: UInt8.self)
        let reader = SSLAnswerReader(promise: answer)
        do {
            try channel.pipeline.syncOperations.addHandler(reader)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        var request = channel.allocator.buffer(capacity: 8)
        StartupPacket.sslRequest.encode(into: &request)
        channel.writeAndFlush(request, promise: nil)
        channel.read()
        let boundReader = NIOLoopBound(reader, eventLoop: channel.eventLoop)
        return answer.futureResult.flatMapThrowing { byte in
            guard byte == UInt8(ascii: "S") else { throw BackendConnectError.tlsRefused }
            channel.pipeline.syncOperations.removeHandler(boundReader.value, promise: nil)
            let isAddress = host.allSatisfy { $0.isNumber || $0 == "." || $0 == ":" }
            let handler = try NIOSSLClientHandler(context: context, serverHostname: isAddress ? nil : host)
            try channel.pipeline.syncOperations.addHandler(handler, position: .first)
        }
    }
}
