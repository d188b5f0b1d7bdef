// A tiny hash router (#/path?query): works under tauri:// and behind the server's fallback.
import { useEffect, useState } from 'preact/hooks';

export type Route = { path: string; parts: string[]; query: URLSearchParams };

function current(): Route {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, search = ''] = raw.split('?');
  return { path, parts: path.split('/').filter(Boolean), query: new URLSearchParams(search) };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(current);
  useEffect(() => {
    const on = () => setRoute(current());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

export const navigate = (to: string) => { location.hash = to; };
