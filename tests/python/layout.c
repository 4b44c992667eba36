/* Prints the size and field offsets of every structure of the public API
 * (client/lib/include/attnd/client.h and the headers it includes) as JSON, so that the
 * Python binding's ctypes declarations (client/python/attnd/_lib.py) can be
 * checked against what the C compiler made of the header
 * (tests/python/test_layout.py). */
#include <stddef.h>
#include <stdio.h>

#include "attnd/client.h"

static int first_struct = 1, first_field;

static void begin(const char *name, size_t size)
{
    printf("%s\"%s\": {\"size\": %zu, \"fields\": {", first_struct ? "" : ", ", name, size);
    first_struct = 0;
    first_field = 1;
}

static void field(const char *name, size_t off)
{
    printf("%s\"%s\": %zu", first_field ? "" : ", ", name, off);
    first_field = 0;
}

static void end(void)
{
    printf("}}");
}

#define S(T) begin(#T, sizeof(T))
#define F(T, f) field(#f, offsetof(T, f))

int main(void)
{
    printf("{");
    S(attnd_error); F(attnd_error, code); F(attnd_error, msg); end();
    S(attnd_session_id); F(attnd_session_id, bytes); end();
    S(attnd_client_options); F(attnd_client_options, deadline_ms);
    F(attnd_client_options, connect_timeout_ms); F(attnd_client_options, max_message_bytes);
    F(attnd_client_options, transport); F(attnd_client_options, ucx_spin_us);
    F(attnd_client_options, tls_ca_file); F(attnd_client_options, tls_cert_file);
    F(attnd_client_options, tls_key_file); F(attnd_client_options, tls_server_name);
    F(attnd_client_options, token); end();
    S(attnd_model_info); F(attnd_model_info, name); F(attnd_model_info, kind);
    F(attnd_model_info, n_layers); F(attnd_model_info, n_q_heads);
    F(attnd_model_info, n_kv_heads); F(attnd_model_info, head_dim);
    F(attnd_model_info, d_latent); F(attnd_model_info, d_rope); F(attnd_model_info, scale);
    F(attnd_model_info, kv_dtype); F(attnd_model_info, page_size); F(attnd_model_info, d_k);
    F(attnd_model_info, d_v); F(attnd_model_info, kv_token_elems); end();
    S(attnd_kv_chunk); F(attnd_kv_chunk, session); F(attnd_kv_chunk, layer);
    F(attnd_kv_chunk, start); F(attnd_kv_chunk, n_tokens); F(attnd_kv_chunk, kv_token_elems);
    F(attnd_kv_chunk, dtype); F(attnd_kv_chunk, data); end();
    S(attnd_tensor); F(attnd_tensor, dtype); F(attnd_tensor, ndim); F(attnd_tensor, shape);
    F(attnd_tensor, data); end();
    S(attnd_attend_args); F(attnd_attend_args, layer); F(attnd_attend_args, n_seqs);
    F(attnd_attend_args, sessions); F(attnd_attend_args, q); F(attnd_attend_args, new_kv);
    F(attnd_attend_args, positions); F(attnd_attend_args, out_dtype);
    F(attnd_attend_args, out); F(attnd_attend_args, out_capacity); F(attnd_attend_args, lse);
    F(attnd_attend_args, lse_capacity); F(attnd_attend_args, up_project);
    F(attnd_attend_args, q_form); end();
    S(attnd_sparse_policy); F(attnd_sparse_policy, kind); F(attnd_sparse_policy, sink);
    F(attnd_sparse_policy, window); F(attnd_sparse_policy, topk_pages);
    F(attnd_sparse_policy, topk_fraction); end();
    S(attnd_sparse_rule); F(attnd_sparse_rule, layer_begin); F(attnd_sparse_rule, layer_end);
    F(attnd_sparse_rule, head_begin); F(attnd_sparse_rule, head_end);
    F(attnd_sparse_rule, policy); end();
    S(attnd_sparse_args); F(attnd_sparse_args, given_groups); F(attnd_sparse_args, given_indptr);
    F(attnd_sparse_args, given_idx); F(attnd_sparse_args, n_given_idx);
    F(attnd_sparse_args, return_pages); F(attnd_sparse_args, chosen_indptr);
    F(attnd_sparse_args, chosen_indptr_capacity); F(attnd_sparse_args, chosen);
    F(attnd_sparse_args, chosen_capacity); F(attnd_sparse_args, chosen_groups);
    F(attnd_sparse_args, chosen_tokens); F(attnd_sparse_args, n_chosen_lists);
    F(attnd_sparse_args, n_chosen); end();
    S(attnd_server_timing); F(attnd_server_timing, valid); F(attnd_server_timing, queue_ns);
    F(attnd_server_timing, validate_ns); F(attnd_server_timing, kernel_ns);
    F(attnd_server_timing, fanout_ns); F(attnd_server_timing, encode_ns); end();
    S(attnd_stats); F(attnd_stats, sessions); F(attnd_stats, max_sessions);
    F(attnd_stats, pages_total); F(attnd_stats, pages_used); F(attnd_stats, pages_reserved);
    F(attnd_stats, page_bytes); F(attnd_stats, attend_calls); F(attnd_stats, attend_sequences);
    F(attnd_stats, append_calls); F(attnd_stats, tokens_appended); F(attnd_stats, errors);
    F(attnd_stats, kv_bytes_read); F(attnd_stats, uptime_ms); F(attnd_stats, group_size);
    F(attnd_stats, group_rank); F(attnd_stats, group_connected); F(attnd_stats, group_mode);
    F(attnd_stats, group_missing); F(attnd_stats, group_peer_failures);
    F(attnd_stats, kv_bytes_dense); F(attnd_stats, select_bytes_read); F(attnd_stats, select_ns);
    F(attnd_stats, select_calls); F(attnd_stats, pages_evicted);
    F(attnd_stats, ucx_endpoints); F(attnd_stats, ucx_transports);
    F(attnd_stats, stats_scope); F(attnd_stats, sessions_expired);
    F(attnd_stats, pages_expired); end();
    printf("}\n");
    return 0;
}
