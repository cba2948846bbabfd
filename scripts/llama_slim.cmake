# Read by CMake right after llama.cpp's own project() call, through the
# CMAKE_PROJECT_llama.cpp_INCLUDE hook that scripts/build_llama.sh sets. llama-cpp-python
# forces LLAMA_BUILD_COMMON on before it adds llama.cpp; the Python binding loads only
# libllama and libggml*, never the common library (argument parsing, chat templates, an HTTP
# client), which with its vendored cpp-httplib is about half of the compile time. Turning it
# off here, after llama-cpp-python's FORCE and before llama.cpp reads the option, builds
# only what the binding loads.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama.cpp common library (not loaded by the Python binding)" FORCE)
