/* common/xmllib.h: libxml2, loaded on first use (common/dynlib.h).
 *
 * The S3 store parses its listings with it and vm/ libvirt's XML; a
 * command that does neither never maps it.  xmllib() loads it and runs
 * xmlInitParser once, from any thread.
 */
#ifndef COMMON_XMLLIB_H
#define COMMON_XMLLIB_H

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xpath.h>

#define XMLLIB_SYMS(X) \
    X(xmlDocGetRootElement) X(xmlFreeDoc) X(xmlInitParser) X(xmlNodeGetContent) \
    X(xmlReadMemory) X(xmlXPathEvalExpression) X(xmlXPathFreeContext) \
    X(xmlXPathFreeObject) X(xmlXPathNewContext)

struct xmllib {
#define XMLLIB_FIELD(f) __typeof__(f) *f;
    XMLLIB_SYMS(XMLLIB_FIELD)
#undef XMLLIB_FIELD
    xmlFreeFunc free;              /* libxml2's xmlFree */
};

/* The library, or NULL with the error set (error.h). */
const struct xmllib *xmllib(void);

#endif
