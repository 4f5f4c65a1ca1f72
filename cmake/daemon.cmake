# The daemon side: protocol library, job kind table, lathed, lathe-worker, the lathe CLI, their tests, the
# benchmark's extra libraries and the optional fuzz target. Included from the top-level CMakeLists.txt.
pkg_check_modules(ZMQ REQUIRED libzmq)
pkg_check_modules(MSGPACK REQUIRED msgpack)
pkg_check_modules(SQLITE REQUIRED sqlite3)

# Wire protocol and utilities, over the status type (lathed and lathe never touch Vulkan or the engine).
add_library(lathe_common STATIC common/proto.c common/util.c)
target_include_directories(lathe_common PUBLIC ${MSGPACK_INCLUDE_DIRS} ${ZMQ_INCLUDE_DIRS})
target_link_libraries(lathe_common PUBLIC lathe_status ${MSGPACK_LINK_LIBRARIES} ${ZMQ_LINK_LIBRARIES})

# The kind table (schemas, validators, policies): linked by the daemon, the worker and the CLI.
add_library(lathe_kinds STATIC jobs/kinds.c)
target_link_libraries(lathe_kinds PUBLIC lathe_common)

# The client library (CLI, tests, benchmark).
add_library(lathe_client STATIC client/lc.c)
target_link_libraries(lathe_client PUBLIC lathe_common)

add_executable(lathed daemon/lathed.c daemon/outbox.c daemon/requests.c daemon/events.c daemon/sched.c daemon/slurm.c daemon/zap.c
                      daemon/store.c daemon/preflight.c)
target_include_directories(lathed PRIVATE ${SQLITE_INCLUDE_DIRS})
target_link_libraries(lathed lathe_kinds ${SQLITE_LINK_LIBRARIES})

# Every jobs/*.c but the table itself: the runners (one file per kind), the runner API over a host (job.c) and the
# in-process host (job_local.c). The worker is the daemon's host; tests and tools use the in-process one.
file(GLOB RUNNER_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/jobs/*.c)
list(REMOVE_ITEM RUNNER_SRC ${CMAKE_SOURCE_DIR}/jobs/kinds.c)
add_library(lathe_jobs STATIC ${RUNNER_SRC})
target_link_libraries(lathe_jobs PUBLIC lathe_kinds lathe_methods Threads::Threads)
add_executable(lathe-worker daemon/worker.c daemon/tokenize.c)
target_link_libraries(lathe-worker lathe_jobs)

if(LATHE_TESTS AND EXISTS ${CMAKE_SOURCE_DIR}/tests/jobs)
  pkg_check_modules(CRITERION_J REQUIRED criterion)
  file(GLOB JOBS_TEST_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/jobs/test_*.c ${CMAKE_SOURCE_DIR}/tests/support/*.c)
  add_executable(test_jobs ${JOBS_TEST_SRC})
  target_include_directories(test_jobs PRIVATE ${CMAKE_SOURCE_DIR}/tests ${CRITERION_J_INCLUDE_DIRS})
  target_link_libraries(test_jobs lathe_jobs lathe_ref ${CRITERION_J_LIBRARIES})
  target_compile_definitions(test_jobs PRIVATE LATHE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
endif()

pkg_check_modules(JANSSON_CLI REQUIRED jansson)
add_executable(lathe client/lathe.c)
target_include_directories(lathe PRIVATE ${JANSSON_CLI_INCLUDE_DIRS})
target_link_libraries(lathe lathe_client lathe_kinds ${JANSSON_CLI_LINK_LIBRARIES})

if(LATHE_TESTS AND EXISTS ${CMAKE_SOURCE_DIR}/tests/daemon)
  pkg_check_modules(CRITERION_D REQUIRED criterion)
  file(GLOB DAEMON_TEST_SRC CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/daemon/*.c)
  add_executable(test_daemon ${DAEMON_TEST_SRC})
  target_include_directories(test_daemon PRIVATE ${CMAKE_SOURCE_DIR}/tests ${CRITERION_D_INCLUDE_DIRS}
                             ${SQLITE_INCLUDE_DIRS})
  target_link_libraries(test_daemon lathe_client lathe_kinds ${CRITERION_D_LINK_LIBRARIES} ${SQLITE_LINK_LIBRARIES}
                        ${JANSSON_CLI_LINK_LIBRARIES} m)
  # The tests start the real binaries from the build folder.
  target_compile_definitions(test_daemon PRIVATE LATHE_BIN_DIR="${CMAKE_BINARY_DIR}/bin"
                             LATHE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  add_dependencies(test_daemon lathed lathe-worker lathe lathe_test_fullfs)
  # A disk that fills up on demand (LD_PRELOAD into lathed) for the store-failure tests.
  add_library(lathe_test_fullfs SHARED ${CMAKE_SOURCE_DIR}/tests/preload/fullfs.c)
  target_link_libraries(lathe_test_fullfs ${CMAKE_DL_LIBS})
  # Plain code even in the sanitizer build: preloaded ahead of a sanitized lathed it must not bring its own runtime.
  target_compile_options(lathe_test_fullfs PRIVATE -fno-sanitize=all)
  target_link_options(lathe_test_fullfs PRIVATE -fno-sanitize=all)
  set_target_properties(lathe_test_fullfs PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lib)
  target_compile_definitions(test_daemon PRIVATE LATHE_FULLFS="$<TARGET_FILE:lathe_test_fullfs>")
endif()

# bench/daemon.c becomes bench_daemon in the top-level file, after this one is read: link it at the end.
function(lathe_daemon_bench_libs)
  if(TARGET bench_daemon)
    target_link_libraries(bench_daemon lathe_client)
    add_dependencies(bench_daemon lathed lathe-worker)
  endif()
endfunction()
cmake_language(DEFER CALL lathe_daemon_bench_libs)

# The message decoder's fuzz targets (lathe_fuzz_target, top-level CMakeLists.txt).
lathe_fuzz_target(proto lathe_kinds)

# make install (PREFIX, DESTDIR): the three programs, the docs, and the systemd user unit with its paths under the
# prefix. The shaders are compiled into the programs; nothing else is read at run time.
install(TARGETS lathed lathe-worker lathe RUNTIME DESTINATION bin)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/docs/ DESTINATION share/doc/lathe FILES_MATCHING PATTERN "*.md" PATTERN "*.svg")
install(FILES ${CMAKE_SOURCE_DIR}/README.md DESTINATION share/doc/lathe)
install(CODE "
  file(READ \"${CMAKE_SOURCE_DIR}/dist/lathed.service\" unit)
  string(REPLACE \"%h/.local\" \"\${CMAKE_INSTALL_PREFIX}\" unit \"\${unit}\")
  file(WRITE \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/lib/systemd/user/lathed.service\" \"\${unit}\")
  message(STATUS \"Installing: \$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/lib/systemd/user/lathed.service\")")
