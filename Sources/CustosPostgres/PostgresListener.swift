import NIOCore
import NIOPosix

/// Accepts PostgreSQL clients and gives each its own ``ClientSession``.
public enum PostgresListener {
    /// Binds the listener; the returned channel's `localAddress` has the port actually bound.
    public static func bind(gateway: PostgresGateway, group: any EventLoopGroup) async throws -> any Channel {
        let maxMessageSize = gateway.settings.maxMessageSize
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(ClientDecoder(maxMessageSize: maxMessageSize)))
                    try channel.pipeline.syncOperations.addHandler(ClientSession(gateway: gateway))
                }
            }
            .bind(host: gateway.settings.host, port: gateway.settings.port)
            .get()
    }
}
