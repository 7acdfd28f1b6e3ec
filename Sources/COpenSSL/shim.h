#ifndef CUSTOS_COPENSSL_SHIM_H
#define CUSTOS_COPENSSL_SHIM_H

/* The SHA256_Init/Update/Final interface is deprecated in OpenSSL 3 in favour of EVP, which
 * allocates a context per digest; the low-level one is kept and is what we need. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>

#endif
