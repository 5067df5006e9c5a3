#include "CBPFShim.h"
