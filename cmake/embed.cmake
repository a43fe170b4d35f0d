# Turns a text file into a C++ source defining memlens::kDefaultConfigYaml.
file(READ ${IN} content)
set(delim "MEMLENS_EMBED")
file(WRITE ${OUT} "namespace memlens {\nextern const char* const kDefaultConfigYaml;\nconst char* const kDefaultConfigYaml = R\"${delim}(${content})${delim}\";\n}\n")
