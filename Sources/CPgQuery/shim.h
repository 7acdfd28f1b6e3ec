#ifndef CUSTOS_CPGQUERY_SHIM_H
#define CUSTOS_CPGQUERY_SHIM_H
#include <pg_query.h>
#endif
