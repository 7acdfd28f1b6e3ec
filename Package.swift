// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Custos",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "custos", targets: ["custos"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
    ],
    targets: [
        // Identity, Gate, Recorder, events: no NIO, no I/O.
        .target(
            name: "CustosCore",
            dependencies: [
                "COpenSSL",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // PostgreSQL wire codec (both directions), session state machine, listener, backend link.
        .target(
            name: "CustosPostgres",
            dependencies: [
                "CustosCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The event store: SQLite through GRDB, WAL, group commit.
        .target(
            name: "CustosStore",
            dependencies: [
                "CustosCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The admin HTTP API (Hummingbird): approvals.
        .target(
            name: "CustosAdmin",
            dependencies: [
                "CustosCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Composition root: configuration, JWKS fetching, services.
        .target(
            name: "CustosServer",
            dependencies: [
                "CustosCore", "CustosPostgres", "CustosStore", "CustosSQL", "CustosAdmin",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // OpenSSL's libcrypto (Debian libssl-dev): allocation-free SHA-256 for masking and digests.
        .systemLibrary(name: "COpenSSL", pkgConfig: nil, providers: [.apt(["libssl-dev"])]),
        // libpg_query as a system library: the real PostgreSQL parser (Debian libpg-query-dev).
        .systemLibrary(name: "CPgQuery", pkgConfig: nil, providers: [.apt(["libpg-query-dev"])]),
        // PostgreSQL statement analysis over libpg_query: implements CustosCore's StatementAnalyzer.
        .target(name: "CustosSQL", dependencies: ["CustosCore", "CPgQuery"], swiftSettings: swiftSettings),
        .executableTarget(
            name: "custos",
            dependencies: [
                "CustosServer", "CustosStore", "CustosCore", "CustosSQL", "CustosAdmin", "CustosPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Fuzz targets (scripts/fuzz builds them with libFuzzer); a plain build runs a corpus through them.
        .executableTarget(
            name: "custos-fuzz",
            dependencies: ["CustosPostgres", "CustosSQL", "CustosServer", .product(name: "NIOCore", package: "swift-nio")],
            path: "Sources/CustosFuzz", swiftSettings: swiftSettings),
        .testTarget(name: "CustosCoreTests", dependencies: ["CustosCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "CustosPostgresTests",
            dependencies: ["CustosPostgres", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "CustosStoreTests", dependencies: ["CustosStore", "CustosCore"], swiftSettings: swiftSettings),
        .testTarget(name: "CustosServerTests", dependencies: ["CustosServer"], swiftSettings: swiftSettings),
        .testTarget(
            name: "CustosAdminTests",
            dependencies: [
                "CustosAdmin", "CustosCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "CustosSQLTests", dependencies: ["CustosSQL", "CustosCore"], swiftSettings: swiftSettings),
    ]
)
